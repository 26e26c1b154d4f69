"""Build a large six-point capture set from a real lab capture (pcaps/http-get, or --sample).

Each connection of the sample (12 packets seen at the six points of the way) is replayed N
times with its own client port, IP IDs, sequence numbers and timestamps (CONN_RATE connections a
second), so the set has the shape of real traffic: every packet at every point, VXLAN on the
NICs. Bytes are patched in place (checksums are left as they are; neither tracer nor tshark
checks them by default).

    python bench/make_captures.py OUTDIR [--frames 1000000]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracer.decode import decode  # noqa: E402
from tracer.capture.pcapio import open_capture  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "pcaps")
CONN_RATE = 500.0
STEP_BACK = 0.001  # seconds a stepped-back record goes back (--step-back)


def way_points(sample: str) -> list[str]:
    """The points of the sample's way (its path.json): the six of the exercise's."""
    with open(os.path.join(SAMPLES, sample, "path.json")) as f:
        return [p["id"] for p in json.load(f)["points"]]


def load_templates(sample: str):
    out = {}
    for point in way_points(sample):
        cap, recs = open_capture(os.path.join(SAMPLES, sample, point + ".pcap"))
        frames = []
        for r in recs:
            fr = decode(cap.interfaces[0].linktype, r.data, r.orig_len)
            if fr.proto != 6:
                continue
            frames.append((r.time, bytearray(r.data), fr.ip_offset, fr.l4_offset, fr.sport == 80))
        out[point] = (cap.interfaces[0].linktype, frames)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--sample", default="http-get", help="the sample in pcaps/ whose connection is replayed")
    ap.add_argument("--step-back", type=float, default=0.0, metavar="FRACTION",
                    help="write this share of each file's records 1 ms earlier than their place, as multi-queue "
                         "NICs and `-i any` captures go a little back in time (reordercap puts them in order)")
    args = ap.parse_args()
    templates = load_templates(args.sample)
    step = round(args.step_back * 10000)
    per_conn = sum(len(f) for _, f in templates.values())
    conns = -(-args.frames // per_conn)
    t0 = min(f[0][0] for _, f in templates.values())
    total = 0
    for point, (linktype, frames) in templates.items():
        path = os.path.join(args.outdir, point + ".pcap")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype))
            # Connections overlap in time: keep the frames of those still going in a heap and write
            # each once no later connection can come before it, so that the file is in time order
            # as tcpdump writes it.
            pending: list = []
            for c in range(conns + 1):
                base = c / CONN_RATE
                while pending and (c == conns or pending[0][0] < base + 1.8e9):  # (every frame is >= t0)
                    t, _, d = heapq.heappop(pending)
                    if step and (total * 2654435761) % 10000 < step:
                        t -= STEP_BACK
                    sec = int(t)
                    f.write(struct.pack("<IIII", sec, int((t - sec) * 1e9), len(d), len(d)))
                    f.write(d)
                    total += 1
                if c == conns:
                    break
                port = 1024 + c % 60000
                shift = (c * 7919) & 0xFFFFFFFF
                for k, (ts, data, ipo, l4o, from_server) in enumerate(frames):
                    d = bytearray(data)
                    struct.pack_into("!H", d, ipo + 4, (struct.unpack_from("!H", d, ipo + 4)[0] + c) & 0xFFFF)
                    struct.pack_into("!H", d, l4o + (2 if from_server else 0), port)
                    seq, ack = struct.unpack_from("!II", d, l4o + 4)
                    struct.pack_into("!II", d, l4o + 4, (seq + shift) & 0xFFFFFFFF, (ack + shift) & 0xFFFFFFFF if ack else 0)
                    heapq.heappush(pending, (ts - t0 + 1.8e9 + base, c * 1000 + k, bytes(d)))
    print(f"{total} frames, {conns} connections, {len(templates)} points in {args.outdir}")


if __name__ == "__main__":
    main()
