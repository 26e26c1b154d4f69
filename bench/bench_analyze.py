"""Benchmark: `tracer analyze --summary --output json` against tshark merely dissecting the same files.

Builds (once, cached in bench/out/) a six-point capture set of at least 1,000,000 frames from the
lab's real capture (bench/make_captures.py), then measures in the same run, RUNS times each:

  reference: tshark -T fields over every file (dissection only, no correlation)
  tracer:    tracer analyze DIR --summary --output json (decode + correlate + summary)

and prints the medians, packets per second, the ratio (target: tracer >= 10x tshark) and
tracer's peak memory (target: < 500 MB).

    python bench/bench_analyze.py [--frames 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TSHARK_FIELDS = ["frame.time_epoch", "eth.src", "eth.dst", "ip.src", "ip.dst", "ip.ttl", "ip.id", "tcp.srcport",
                 "tcp.dstport", "tcp.seq_raw", "tcp.flags", "vxlan.vni"]


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) if peak > before else peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data = os.path.join(HERE, "out", f"six-point-{args.frames}")
    if not os.path.isdir(data):
        subprocess.run([sys.executable, os.path.join(HERE, "make_captures.py"), data, "--frames", str(args.frames)],
                       check=True)
    files = sorted(glob.glob(os.path.join(data, "*", "*.pcap")))
    # tracer's bytecode, compiled as `pip install` does (a PYTHONDONTWRITEBYTECODE sandbox would
    # otherwise compile it from source on every run, which no installed tracer pays).
    import compileall
    compileall.compile_dir(os.path.join(HERE, "..", "tracer"), quiet=1)
    tshark_cmd = ["sh", "-c", " ; ".join(
        "tshark -n -r " + f + " -T fields " + " ".join(f"-e {x}" for x in TSHARK_FIELDS) + " >/dev/null"
        for f in files)]
    tracer_cmd = [sys.executable, "-m", "tracer", "analyze", data, "--summary", "--output", "json"]
    out = subprocess.run(tracer_cmd, check=True, capture_output=True, text=True).stdout
    import json
    frames = json.loads(out)["summary"]["frames"]
    ref, mine, peaks = [], [], []
    for _ in range(args.runs):
        ref.append(timed(tshark_cmd)[0])
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: measure tracer in its own child.
        probe = subprocess.run([sys.executable, "-c",
                                "import resource,subprocess,sys,time;t=time.perf_counter();"
                                "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL);"
                                "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                                *tracer_cmd], check=True, capture_output=True, text=True).stdout.split()
        mine.append(float(probe[0]))
        peaks.append(int(probe[1]))
    r, m = statistics.median(ref), statistics.median(mine)
    print(f"capture set: {data} ({len(files)} points, {frames} frames)")
    print(f"tshark -T fields (reference): median {r:.2f} s  = {frames / r:,.0f} frames/s   runs {[round(x, 2) for x in ref]}")
    print(f"tracer analyze --summary:     median {m:.2f} s  = {frames / m:,.0f} frames/s   runs {[round(x, 2) for x in mine]}")
    print(f"ratio tracer/tshark speed:    {r / m:.2f}x   (target >= 10x)")
    print(f"tracer peak memory:           {max(peaks) / 1024:.0f} MB   (target < 500 MB)")


if __name__ == "__main__":
    main()
