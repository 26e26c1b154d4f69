"""Proof that a change kept tracer's output byte for byte: every view, JSON document and merged
pcapng of a set of captures, as SHA-256 sums.

    python bench/same_output.py record before.json [--bench]   # on the old commit
    python bench/same_output.py check before.json [--bench]    # on the new one: exit 1 on any difference

Runs the real CLI (`python -m tracer analyze ...`, stdout not a terminal) from the repository's
root, so paths in the documents are the same wherever it is checked out, over:
  - every sample in pcaps/ (directories with path.json), in every view: hops, --all-flows,
    --summary, -o json, --summary -o json, --pcapng (the file and what is printed), and one
    capture file of each alone;
  - every file of the public captures (../shared/pcaps-public, TRACER_PUBLIC_PCAPS), if there:
    text, -o json, --all-flows;
  - with --bench, the 1,000,008-frame set bench_analyze.py builds (bench/out/): --summary
    -o json with the default readers and with --jobs 1, the summary view, and --pcapng with
    --summary -o json (every packet kept, decoded in full).
tests/test_same_output.py checks the samples' part against tests/golden/outputs.json.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = "pcaps"
BENCH_SET = "bench/out/six-point-1000000"


def public_dir() -> str | None:
    for d in (os.environ.get("TRACER_PUBLIC_PCAPS"), os.path.join(ROOT, "..", "shared", "pcaps-public"),
              "/work/shared/pcaps-public"):
        if d and os.path.isdir(d):
            return d
    return None


def sample_cases() -> list[tuple[str, list[str], bool]]:
    """(name, tracer arguments, writes a pcapng) for the samples in pcaps/."""
    cases = []
    for d in sorted(glob.glob(os.path.join(ROOT, SAMPLES, "*", "path.json"))):
        rel = os.path.relpath(os.path.dirname(d), ROOT)
        name = os.path.basename(rel)
        cases += [
            (f"{name} hops", ["analyze", rel], False),
            (f"{name} all-flows", ["analyze", rel, "--all-flows"], False),
            (f"{name} summary", ["analyze", rel, "--summary"], False),
            (f"{name} json", ["analyze", rel, "-o", "json"], False),
            (f"{name} summary-json", ["analyze", rel, "--summary", "-o", "json"], False),
            (f"{name} pcapng", ["analyze", rel], True),
        ]
        first = sorted(glob.glob(os.path.join(ROOT, rel, "*", "*.pcap")))[0]
        cases.append((f"{name} one-file", ["analyze", os.path.relpath(first, ROOT), "-o", "json"], False))
    return cases


def public_cases() -> list[tuple[str, list[str], bool]]:
    d = public_dir()
    if d is None:
        return []
    cases = []
    for f in sorted(os.listdir(d)):
        if f.endswith((".pcap", ".pcapng")):
            path = os.path.join(d, f)
            cases += [(f"public {f} text", ["analyze", path], False),
                      (f"public {f} json", ["analyze", path, "-o", "json"], False),
                      (f"public {f} all-flows", ["analyze", path, "--all-flows"], False)]
    return cases


def bench_cases() -> list[tuple[str, list[str], bool]]:
    if not os.path.isdir(os.path.join(ROOT, BENCH_SET)):
        subprocess.run([sys.executable, "bench/make_captures.py", BENCH_SET, "--frames", "1000000"], cwd=ROOT, check=True)
    return [
        ("bench summary-json", ["analyze", BENCH_SET, "--summary", "-o", "json"], False),
        ("bench summary-json jobs1", ["analyze", BENCH_SET, "--summary", "-o", "json", "--jobs", "1"], False),
        ("bench summary", ["analyze", BENCH_SET, "--summary"], False),
        ("bench pcapng summary-json", ["analyze", BENCH_SET, "--summary", "-o", "json"], True),
    ]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_case(args: list[str], pcapng: bool) -> dict[str, str]:
    """The sums of what one command printed (stdout, stderr), its exit code and its pcapng."""
    with tempfile.TemporaryDirectory(prefix="tracer-same-") as tmp:
        out = os.path.join(tmp, "merged.pcapng")
        argv = [sys.executable, "-m", "tracer", *args, *(["--pcapng", out] if pcapng else [])]
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR")}
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, env=env)
        # (the pcapng's path is in what is printed: the same name wherever the temp dir is)
        stderr = proc.stderr.replace(out.encode(), b"merged.pcapng")
        sums = {"rc": str(proc.returncode), "stdout": digest(proc.stdout), "stderr": digest(stderr)}
        if pcapng:
            with open(out, "rb") as f:
                sums["pcapng"] = digest(f.read())
        return sums


def collect(bench: bool, samples_only: bool = False) -> dict[str, dict[str, str]]:
    cases = sample_cases() + ([] if samples_only else public_cases()) + (bench_cases() if bench else [])
    return {name: run_case(args, pcapng) for name, args, pcapng in cases}


def compare(want: dict, got: dict) -> list[str]:
    bad = []
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            bad.append(f"{name}: {want.get(name)} != {got.get(name)}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["record", "check"])
    ap.add_argument("file")
    ap.add_argument("--bench", action="store_true", help="also the 1M-frame bench set (minutes)")
    ap.add_argument("--samples-only", action="store_true", help="only pcaps/ (as tests/test_same_output.py)")
    a = ap.parse_args()
    got = collect(a.bench, a.samples_only)
    if a.mode == "record":
        with open(a.file, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"recorded {len(got)} cases in {a.file}")
        return 0
    with open(a.file) as f:
        want = json.load(f)
    if not a.bench:
        want = {k: v for k, v in want.items() if not k.startswith("bench ")}
    if a.samples_only:
        want = {k: v for k, v in want.items() if not k.startswith("public ")}
    bad = compare(want, got)
    for line in bad:
        print("DIFFERENT", line)
    print(f"{len(got) - len(bad)} of {len(got)} cases the same")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
