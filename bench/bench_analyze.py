"""Benchmark: `tracer analyze --summary --output json` against tshark merely dissecting the same files.

Builds (once, cached in bench/out/) a six-point capture set of at least 1,000,000 frames from the
lab's real capture (bench/make_captures.py), then measures in the same run, RUNS times each:

  reference: tshark -T fields over every file (dissection only, no correlation)
  tracer:    tracer analyze DIR --summary --output json (decode + correlate + summary), as it
             runs by default (each big file read by a process of its own when there is more
             than one CPU) and with --jobs 1 (everything in one process)

and prints the medians, packets per second, the ratios (target: tracer >= 10x tshark) and
tracer's peak memory (target: < 500 MB): the largest process (ru_maxrss), and all of tracer's
processes together (the sum of their proportional set sizes, sampled every 50 ms in one more
run of each mode). With --pcapng, also the same set rewritten as pcapng by editcap (what
Wireshark and dumpcap save), in the same runs.

With --against REV, also the tracer of git revision REV (e.g. the commit before a change) on the
same set, run alternately with this tree's in the same runs: the ratio says what the change costs.
With --sample NAME, the set is built from pcaps/NAME instead of http-get (bytes-offloads: bulk
transfers whose super-frames TSO/GSO cut and GRO merged between the points). With --step-back
FRACTION, the set's files have that share of records 1 ms before their place (as multi-queue
NICs and `-i any` write them), and the same set in time order (reordercap) is timed beside it:
the ratio of the two and whether both give the same document (target: at most 1.2x).

    python bench/bench_analyze.py [--frames 1000000] [--runs 3] [--pcapng] [--against REV] [--sample NAME]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TSHARK_FIELDS = ["frame.time_epoch", "eth.src", "eth.dst", "ip.src", "ip.dst", "ip.ttl", "ip.id", "tcp.srcport",
                 "tcp.dstport", "tcp.seq_raw", "tcp.flags", "vxlan.vni"]


def timed(argv: list[str]) -> float:
    """Wall seconds of one command run to completion."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pss_peak(argv: list[str]) -> int:
    """Peak of the summed PSS (KiB) of a command's process and its children, sampled every 50 ms."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        total = 0
        pids = [proc.pid]
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                pids += [int(x) for x in f.read().split()]
        except OSError:
            pass
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            except (OSError, StopIteration):
                pass
        peak = max(peak, total)
        time.sleep(0.05)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pcapng", action="store_true", help="also time the same set as pcapng files")
    ap.add_argument("--against", metavar="REV", help="also time tracer as of this git revision, alternately")
    ap.add_argument("--sample", default="http-get", help="the sample in pcaps/ the set is built from")
    ap.add_argument("--step-back", type=float, default=0.0, metavar="FRACTION",
                    help="records going back in time in this share: timed against the same set in time order")
    ap.add_argument("--no-tshark", action="store_true",
                    help="skip the reference (with --against: only this tree against REV, more runs in the time)")
    args = ap.parse_args()
    name = "six-point" if args.sample == "http-get" else args.sample
    stepped = f"-back{round(args.step_back * 100)}" if args.step_back else ""
    data = os.path.join(HERE, "out", f"{name}-{args.frames}{stepped}")
    if not os.path.isdir(data):
        subprocess.run([sys.executable, os.path.join(HERE, "make_captures.py"), data, "--frames", str(args.frames),
                        "--sample", args.sample, "--step-back", str(args.step_back)], check=True)
    ordered = data + "-ordered" if args.step_back else None
    if ordered and not os.path.isdir(ordered):
        for f in sorted(glob.glob(os.path.join(data, "*", "*.pcap"))):
            dst = os.path.join(ordered, os.path.relpath(f, data))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            subprocess.run(["reordercap", "-n", f, dst + ".part"], check=True, stdout=subprocess.DEVNULL)
            os.rename(dst + ".part", dst)
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
    modes = {"tracer analyze --summary": tracer_cmd, "  the same with --jobs 1": tracer_cmd + ["--jobs", "1"]}
    if ordered:
        in_order = [sys.executable, "-m", "tracer", "analyze", ordered, "--summary", "--output", "json"]
        modes |= {"  the same set in time order": in_order, "  in time order, --jobs 1": in_order + ["--jobs", "1"]}
    if args.against:
        old = checkout(args.against)
        # (run from its own tree: `-m tracer` finds the package in the working directory first)
        before = ["env", "-C", old, sys.executable, "-m", "tracer", "analyze", os.path.abspath(data), "--summary",
                  "--output", "json"]
        modes |= {f"  {args.against} (before)": before, f"  {args.against} --jobs 1": before + ["--jobs", "1"]}
    if args.pcapng:
        ng = data + "-pcapng"
        for f in files:
            dst = os.path.join(ng, os.path.relpath(f, data))[:-len(".pcap")] + ".pcapng"
            if not os.path.exists(dst):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                subprocess.run(["editcap", "-F", "pcapng", f, dst + ".part"], check=True)
                os.rename(dst + ".part", dst)
        ng_cmd = [sys.executable, "-m", "tracer", "analyze", ng, "--summary", "--output", "json"]
        modes |= {"  the same set as pcapng": ng_cmd, "  pcapng with --jobs 1": ng_cmd + ["--jobs", "1"]}
    ref: list[float] = []
    mine: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, list[int]] = {m: [] for m in modes}
    for _ in range(args.runs):
        if not args.no_tshark:
            ref.append(timed(tshark_cmd))
        for mode, cmd in modes.items():
            # ru_maxrss of RUSAGE_CHILDREN is the largest process so far: measure tracer in its own child.
            probe = subprocess.run([sys.executable, "-c",
                                    "import resource,subprocess,sys,time;t=time.perf_counter();"
                                    "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL);"
                                    "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                                    *cmd], check=True, capture_output=True, text=True).stdout.split()
            mine[mode].append(float(probe[0]))
            peaks[mode].append(int(probe[1]))
    print(f"capture set: {data} ({len(files)} points, {frames} frames)")
    r = statistics.median(ref) if ref else None
    if r is not None:
        print(f"tshark -T fields (reference): median {r:.2f} s  = {frames / r:,.0f} frames/s   runs {[round(x, 2) for x in ref]}")
    for mode, cmd in modes.items():
        m = statistics.median(mine[mode])
        print(f"{mode:<30}median {m:.2f} s  = {frames / m:,.0f} frames/s   runs {[round(x, 2) for x in mine[mode]]}")
        ratio = f"ratio to tshark {r / m:.2f}x (target >= 10x); " if r is not None else ""
        print(f"{'':<30}{ratio}peak memory: largest process "
              f"{max(peaks[mode]) / 1024:.0f} MB, all processes {pss_peak(cmd) / 1024:.0f} MB (target < 500 MB)")
    if ordered:
        # (the documents name the files: the same but for the directory)
        same = subprocess.run(modes["  the same set in time order"], check=True, capture_output=True).stdout.replace(
            os.path.abspath(ordered).encode(), os.path.abspath(data).encode()) == \
            subprocess.run(tracer_cmd, check=True, capture_output=True).stdout
        for back, fwd in (("tracer analyze --summary", "  the same set in time order"),
                          ("  the same with --jobs 1", "  in time order, --jobs 1")):
            a, b = statistics.median(mine[back]), statistics.median(mine[fwd])
            print(f"records back in time ({args.step_back:.0%}) against in time order{' with --jobs 1' if 'jobs' in back else ''}: "
                  f"{a:.2f} s / {b:.2f} s = {a / b:.2f}x (target <= 1.2x)")
        print(f"the same document from both: {'yes' if same else 'NO'}")
    if args.against:
        for now, then in (("tracer analyze --summary", f"  {args.against} (before)"),
                          ("  the same with --jobs 1", f"  {args.against} --jobs 1")):
            a, b = statistics.median(mine[now]), statistics.median(mine[then])
            print(f"this tree against {args.against}{' with --jobs 1' if 'jobs' in now else ''}: "
                  f"{a:.2f} s / {b:.2f} s = {a / b:.3f} ({(a / b - 1) * 100:+.1f}%)")
    print(f"CPUs: {len(os.sched_getaffinity(0))}")


def checkout(rev: str) -> str:
    """The tracer package of git revision `rev`, in a directory of its own (git archive: nothing
    in the repository changes), compiled as an install would be."""
    import compileall
    import tempfile
    root = os.path.join(HERE, "..")
    sha = subprocess.run(["git", "-C", root, "rev-parse", "--short", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    dest = os.path.join(tempfile.gettempdir(), f"tracer-bench-{sha}")
    if not os.path.isdir(os.path.join(dest, "tracer")):
        os.makedirs(dest, exist_ok=True)
        archive = subprocess.run(["git", "-C", root, "archive", sha, "tracer"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
        compileall.compile_dir(os.path.join(dest, "tracer"), quiet=1)
    return dest


if __name__ == "__main__":
    main()
