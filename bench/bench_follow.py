"""Benchmark: `tracer follow curl httpbin` end to end against the bare minimum, in the same run.

    .venv/bin/python bench/bench_follow.py [--runs 10]   (as root)

Brings up a lab of its own (own prefix and state dir), then alternates, N times:

  follow  `python -m tracer follow curl httpbin` in a new process, wall time from exec to exit
          (interpreter start, discovery, agents, curl, collect, correlate, render), with its
          phases from the hidden --timings-file;
  bare    what any capture of this request needs at least: tcpdump (immediate mode) on the
          same six points started in parallel, wait until each says "listening", the same
          curl, the same 50 ms for the tail of the exchange (the agents' --linger), SIGINT
          to each tcpdump and wait for it; driven from this (already running) Python.

Before that, once: tracer's bytecode is compiled (as `pip install` does, and as any first run
does unless PYTHONDONTWRITEBYTECODE is set, as it is in some sandboxes: every run would then
compile tracer from source, ~50 ms that no installed tracer pays; --no-compile keeps that),
and one follow warms the page cache.

Prints medians, the ratio and the breakdown. Targets: follow < 3 s, follow / bare < 1.5.
The follow's phases: discover (the way; the agents start meanwhile), agents_ready (from their
arguments to "ready"), request (curl), collect (stop, drain, pcaps to disk), correlate (import
the view, correlate, render); the rest is interpreter start, imports up to discovery, and exit.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracer.cluster.discover import discover  # noqa: E402
from tracer.app.curl import curl_argv  # noqa: E402
from tracer.cluster.lab import Lab, StateStore, down, exercise, up  # noqa: E402

LINGER = 0.05
PHASES = ("discover", "agents_ready", "request", "collect", "correlate")


def run_follow(store: StateStore, workdir: Path) -> tuple[float, dict]:
    timings = workdir / "timings.json"
    env = {**os.environ, "TRACER_LAB_PREFIX": store.prefix, "TRACER_STATE_DIR": str(store.directory)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracer", "follow", "curl", "httpbin", "--timings-file", str(timings)],
                          capture_output=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or b"request 1: HTTP 200" not in proc.stdout:
        raise SystemExit(f"tracer follow failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return wall, json.loads(timings.read_text())


def run_bare(lab: Lab, points: list[tuple[str, str]], url: str, workdir: Path) -> float:
    t = time.perf_counter()
    procs = [lab.popen(node, ["tcpdump", "--immediate-mode", "-U", "-n", "-Z", "root", "-s", "0", "-i", dev,
                              "-w", str(workdir / f"{node}-{dev}.pcap")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for node, dev in points]
    for p in procs:
        seen = b""
        while b"listening on" not in seen:
            if p.poll() is not None:
                raise SystemExit(f"tcpdump exited: {seen.decode(errors='replace')}")
            if select.select([p.stderr], [], [], 1)[0]:
                seen += os.read(p.stderr.fileno(), 4096)
    res = lab.exec("curl", curl_argv(url, 10))
    time.sleep(LINGER)
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        p.communicate(timeout=5)
    wall = time.perf_counter() - t
    if not res.stdout.startswith(b"200"):
        raise SystemExit(f"bare curl failed: {res}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true",
                    help="do not compile tracer's bytecode first (measure a PYTHONDONTWRITEBYTECODE setup as it is)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_follow.py needs root (network namespaces, packet sockets)")
    if not args.no_compile:
        import compileall
        import tracer

        compileall.compile_dir(str(Path(tracer.__file__).parent), quiet=1)
    state_dir = Path(tempfile.mkdtemp(prefix="tracer-bench-"))
    store = StateStore(prefix=f"trb{os.getpid()}-", directory=state_dir)
    lab = up(exercise(), store=store)
    try:
        way = discover(lab.backend(), "curl", "httpbin")
        points = [(p.node, p.interface) for p in way.points]
        url = f"http://{way.dst.pod.ip}:80/get"
        run_follow(store, state_dir)  # warm the page cache (python, scapy) for both sides
        follows, bares, phases = [], [], {k: [] for k in PHASES}
        for i in range(args.runs):
            wall, tm = run_follow(store, state_dir)
            follows.append(wall)
            for k in PHASES:
                phases[k].append(tm[k])
            bares.append(run_bare(lab, points, url, state_dir))
            print(f"run {i + 1:2}: follow {follows[-1]:.3f} s   bare {bares[-1]:.3f} s", file=sys.stderr)
    finally:
        down(store)
        shutil.rmtree(state_dir, ignore_errors=True)
    f, b = statistics.median(follows), statistics.median(bares)
    print(f"tracer follow curl httpbin, {args.runs} runs, medians"
          + (" (tracer's bytecode not compiled first)" if args.no_compile else ""))
    print(f"  follow (end to end, new process)  {f:.3f} s   target < 3 s: {'ok' if f < 3 else 'MISSED'}")
    print(f"  bare (6 x tcpdump, curl, stop)    {b:.3f} s")
    print(f"  ratio follow / bare               {f / b:.2f}x  target < 1.5x: {'ok' if f / b < 1.5 else 'MISSED'}")
    print("  breakdown of follow:")
    accounted = 0.0
    for k in PHASES:
        m = statistics.median(phases[k])
        accounted += m
        print(f"    {k:<14} {m:.3f} s" + ("   (imports the view, correlates, renders)" if k == "correlate" else ""))
    print(f"    {'rest':<14} {f - accounted:.3f} s   (interpreter start, imports up to discovery, exit)")


if __name__ == "__main__":
    main()
