"""Benchmark `tracer lab up` + `tracer lab down` (not a test; needs root).

    sudo .venv/bin/python bench/bench_lab_up.py [RUNS]

Runs the real CLI in new processes (as a user would) with its own namespace prefix and state
dir, and prints the median next to a reference measured in the same run: bare
`ip netns add` / `ip netns del` of the same number of namespaces. Target: up under 3 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_UP_S = 3.0
NAMESPACES = 5  # underlay, worker1, worker2, curl, httpbin


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tracer-bench-") as state_dir:
        bench(runs, {**os.environ, "TRACER_LAB_PREFIX": f"trbench{os.getpid()}-", "TRACER_STATE_DIR": state_dir})


def bench(runs: int, env: dict[str, str]) -> None:
    prefix = env["TRACER_LAB_PREFIX"]
    tracer = [sys.executable, "-m", "tracer", "lab"]
    names = [f"{prefix}ref{i}" for i in range(NAMESPACES)]
    ups, downs, refs = [], [], []
    for _ in range(runs):
        ups.append(timed([*tracer, "up"], env))
        downs.append(timed([*tracer, "down"], env))
        refs.append(_ref(names))
    up, dn, ref = (statistics.median(x) for x in (ups, downs, refs))
    print(f"runs: {runs}")
    print(f"tracer lab up    median {up:6.3f} s  (min {min(ups):.3f}, max {max(ups):.3f})  target < {TARGET_UP_S} s: "
          f"{'ok' if up < TARGET_UP_S else 'MISSED'}")
    print(f"tracer lab down  median {dn:6.3f} s")
    print(f"reference: ip netns add + del of {NAMESPACES} namespaces, median {ref:6.3f} s "
          f"(up is {up / ref:.0f}x that)")


def _ref(names: list[str]) -> float:
    start = time.perf_counter()
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    for n in names:
        subprocess.run(["ip", "netns", "del", n], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
