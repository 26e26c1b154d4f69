"""Build a large six-point capture set from the real lab capture pcaps/http-get.

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
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracer.decode import decode  # noqa: E402
from tracer.capture.pcapio import open_capture  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "pcaps", "http-get")
SIX = ("worker1/cali35e3a5cb80b", "worker1/vxlan.calico", "worker1/eth1",
       "worker2/eth1", "worker2/vxlan.calico", "worker2/cali4a3c027cd7f")
CONN_RATE = 500.0


def load_templates():
    out = {}
    for point in SIX:
        cap, recs = open_capture(os.path.join(SAMPLE, point + ".pcap"))
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
    args = ap.parse_args()
    templates = load_templates()
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
    print(f"{total} frames, {conns} connections, {len(SIX)} points in {args.outdir}")


if __name__ == "__main__":
    main()
