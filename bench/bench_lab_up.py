"""Benchmark `tracer lab up --cni X` + `tracer lab down` for every data path (not a test; needs root).

    sudo .venv/bin/python bench/bench_lab_up.py [RUNS] [--cni NAME ...]

Runs the real CLI in new processes (as a user would) with its own namespace prefix and state
dir, and prints each data path's median next to a reference measured in the same run: bare
`ip netns add` / `ip netns del` of the same number of namespaces. Target: up under 1 s. A data
path this kernel cannot build (no ipip or geneve devices) is said so and left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from tracer.cluster.lab.topology import CNIS

TARGET_UP_S = 1.0
NAMESPACES = 5  # underlay, worker1, worker2, curl, httpbin


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="?", type=int, default=5)
    ap.add_argument("--cni", action="append", choices=CNIS, help="(repeatable; default: every one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tracer-bench-") as state_dir:
        env = {**os.environ, "TRACER_LAB_PREFIX": f"trbench{os.getpid()}-", "TRACER_STATE_DIR": state_dir}
        bench(args.runs, args.cni or list(CNIS), env)


def bench(runs: int, cnis: list[str], env: dict[str, str]) -> None:
    prefix = env["TRACER_LAB_PREFIX"]
    tracer = [sys.executable, "-m", "tracer", "lab"]
    names = [f"{prefix}ref{i}" for i in range(NAMESPACES)]
    refs = []
    print(f"runs: {runs}")
    for cni in cnis:
        ups, downs = [], []
        try:
            for _ in range(runs):
                ups.append(timed([*tracer, "up", "--cni", cni], env))
                downs.append(timed([*tracer, "down"], env))
                refs.append(_ref(names))
        except subprocess.CalledProcessError as e:
            why = (e.stderr or b"").decode(errors="replace").strip().splitlines()
            print(f"{cni:16} not built here: {why[0] if why else e}")
            continue
        up, dn = statistics.median(ups), statistics.median(downs)
        print(f"{cni:16} lab up median {up:6.3f} s (min {min(ups):.3f}, max {max(ups):.3f})  target < {TARGET_UP_S} s: "
              f"{'ok' if up < TARGET_UP_S else 'MISSED'};  down median {dn:6.3f} s")
    if refs:
        ref = statistics.median(refs)
        print(f"reference: ip netns add + del of {NAMESPACES} namespaces, median {ref:6.3f} s")


def _ref(names: list[str]) -> float:
    start = time.perf_counter()
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    for n in names:
        subprocess.run(["ip", "netns", "del", n], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
