"""Benchmark: `tracer follow curl httpbin` end to end against the bare minimum, in the same run.

    .venv/bin/python bench/bench_follow.py [--runs 10]   (as root)

Brings up a lab of its own (own prefix and state dir, warm agents as `lab up` starts them),
then alternates, N times:

  cold    `python -m tracer follow curl httpbin --agents cold` in a new process: the run starts
          its own agents (an interpreter and scapy's import each, in standby while discovery
          runs), wall time from exec to exit;
  warm    the same with the lab's warm agents (the default): a connection to each node's agent
          server, which forks a ready agent;
  in-process  the warm follow called in this (already running) Python (tracer.cli.main), as
          the bare run is driven: no interpreter start, no imports; what a follow costs beyond
          the tool's start, as each request of a watch does;
  bare    what any capture of this request needs at least: tcpdump (immediate mode) on the
          same six points started in parallel, wait until each says "listening", the same
          curl, the same 50 ms for the tail of the exchange (the agents' --linger), SIGINT
          to each tcpdump and wait for it; driven from this Python.

Before that, once: tracer's bytecode is compiled (as `pip install` does, and as any first run
does unless PYTHONDONTWRITEBYTECODE is set, as it is in some sandboxes: every run would then
compile tracer from source, ~50 ms that no installed tracer pays; --no-compile keeps that),
and one follow of each kind warms the page cache.

Prints medians, ratios and the breakdowns. Targets: cold < 1 s; warm within 1.5x of bare (the
in-process figure: like for like; the new process adds the interpreter and tracer's imports).
The phases (from the hidden --timings-file): discover (the way; cold agents start meanwhile),
agents_ready (from their arguments to "ready"), request (curl), collect (stop, drain, pcaps to
disk), correlate (import the view, correlate, render); the rest is interpreter start, imports
up to discovery, and exit.
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


def run_follow(store: StateStore, workdir: Path, agents: str) -> tuple[float, dict]:
    timings = workdir / "timings.json"
    env = {**os.environ, "TRACER_LAB_PREFIX": store.prefix, "TRACER_STATE_DIR": str(store.directory)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracer", "follow", "curl", "httpbin", "--agents", agents,
                           "--timings-file", str(timings)], capture_output=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or b"request 1: HTTP 200" not in proc.stdout:
        raise SystemExit(f"tracer follow failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return wall, json.loads(timings.read_text())


def run_in_process(store: StateStore, workdir: Path) -> tuple[float, dict]:
    """The warm follow through tracer's CLI entry point in this process (its output kept)."""
    import contextlib
    import io

    from tracer.cli import main as tracer_main

    timings = workdir / "timings.json"
    os.environ.update(TRACER_LAB_PREFIX=store.prefix, TRACER_STATE_DIR=str(store.directory))
    out = io.StringIO()
    t = time.perf_counter()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            tracer_main(["follow", "curl", "httpbin", "--agents", "warm", "--timings-file", str(timings)])
        except SystemExit as e:
            code = e.code
    wall = time.perf_counter() - t
    if code not in (0, None) or "request 1: HTTP 200" not in out.getvalue():
        raise SystemExit(f"tracer follow (in process) failed ({code}):\n{out.getvalue()}")
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
    kinds = ("cold", "warm", "in-process")
    walls: dict[str, list[float]] = {k: [] for k in (*kinds, "bare")}
    phases = {k: {p: [] for p in PHASES} for k in kinds}
    try:
        way = discover(lab.backend(), "curl", "httpbin")
        points = [(p.node, p.interface) for p in way.points]
        url = f"http://{way.dst.pod.ip}:80/get"
        run_follow(store, state_dir, "cold")  # warm the page cache (python, scapy) for all of them
        run_follow(store, state_dir, "warm")
        run_in_process(store, state_dir)
        for i in range(args.runs):
            for kind in kinds:
                wall, tm = run_in_process(store, state_dir) if kind == "in-process" else run_follow(store, state_dir, kind)
                walls[kind].append(wall)
                for k in PHASES:
                    phases[kind][k].append(tm[k])
            walls["bare"].append(run_bare(lab, points, url, state_dir))
            print(f"run {i + 1:2}: " + "   ".join(f"{k} {v[-1]:.3f} s" for k, v in walls.items()), file=sys.stderr)
    finally:
        down(store)
        shutil.rmtree(state_dir, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in walls.items()}
    b = m["bare"]
    print(f"tracer follow curl httpbin, {args.runs} runs, medians"
          + (" (tracer's bytecode not compiled first)" if args.no_compile else ""))
    print(f"  cold follow (new process, --agents cold)   {m['cold']:.3f} s   {m['cold'] / b:.2f}x bare   "
          f"target < 1 s: {'ok' if m['cold'] < 1 else 'MISSED'}")
    print(f"  warm follow (new process, warm agents)     {m['warm']:.3f} s   {m['warm'] / b:.2f}x bare")
    print(f"  warm follow (in process, as bare is run)   {m['in-process']:.3f} s   {m['in-process'] / b:.2f}x bare   "
          f"target < 1.5x: {'ok' if m['in-process'] / b < 1.5 else 'MISSED'}")
    print(f"  bare (6 x tcpdump, curl, stop)             {b:.3f} s")
    print("  breakdown (cold / warm / in process):")
    for k in PHASES:
        print(f"    {k:<14} " + " / ".join(f"{statistics.median(phases[kind][k]):.3f}" for kind in kinds) + " s"
              + ("   (imports the view, correlates, renders)" if k == "correlate" else ""))
    rest = [m[kind] - sum(statistics.median(phases[kind][k]) for k in PHASES) for kind in kinds]
    print(f"    {'rest':<14} " + " / ".join(f"{r:.3f}" for r in rest) + " s   (interpreter start, imports, exit)")


if __name__ == "__main__":
    main()
