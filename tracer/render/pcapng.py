"""Write one merged pcapng: an interface per capture point (named `node/interface`), every frame
commented with its flow, packet and hop, so that Wireshark shows tracer's view next to its own.

Written block by block with struct (as pcapio reads them) rather than with scapy's writer, whose
per-interface link types and comments sit behind private methods.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from tracer.errors import CaptureFileError
from tracer.model import Trace
from tracer.model.trace import OtherFrame, RawFrame

TSRESOL_NS = 9


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


class PcapngWriter:
    """`add(point, linktype, time, data, orig_len, comment)`, then `close()`; frames are sorted by time."""

    def __init__(self, path: str):
        self.path = path
        self.frames: list[tuple[float, int, bytes, int, str, int]] = []
        self.ifaces: dict[tuple[str, int], int] = {}

    def add(self, point: str, linktype: int, time: float, data: bytes, orig_len: int, comment: str,
            direction: str = "?") -> None:
        key = (point, linktype)
        if key not in self.ifaces:
            self.ifaces[key] = len(self.ifaces)
        flags = {"in": 1, "out": 2}.get(direction, 0)
        self.frames.append((time, self.ifaces[key], data, orig_len, comment, flags))

    def close(self) -> None:
        try:
            with open(self.path, "wb") as f:
                self._write(f)
        except OSError as e:
            raise CaptureFileError(f"{self.path}: cannot write: {e.strerror}", "choose a writable path for --pcapng") from None

    def _write(self, f: BinaryIO) -> None:
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, b"tracer") + _opt(0, b"")
        f.write(_block(0x0A0D0D0A, shb))
        for (point, linktype), _ in sorted(self.ifaces.items(), key=lambda kv: kv[1]):
            opts = _opt(2, point.encode()) + _opt(9, bytes([TSRESOL_NS])) + _opt(0, b"")
            f.write(_block(1, struct.pack("<HHI", linktype, 0, 0) + opts))
        self.frames.sort(key=lambda fr: fr[0])
        for time, ifid, data, orig_len, comment, flags in self.frames:
            ts = int(round(time * 1e9))
            body = struct.pack("<IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), orig_len) + data
            body += b"\0" * (-len(data) % 4)
            opts = _opt(1, comment.encode()) if comment else b""
            if flags:
                opts += _opt(2, struct.pack("<I", flags))
            body += opts + (_opt(0, b"") if opts else b"")
            f.write(_block(6, body))


def write_pcapng(trace: Trace, frames: tuple[tuple[tuple[RawFrame, ...], ...], ...], path: str,
                 others: tuple[OtherFrame, ...] = ()) -> int:
    """Every frame read: every hop of every kept packet, commented `flow F packet P hop H/N ...`
    with what that frame is and what happened at that hop, and the frames of no flow (`others`),
    commented with why; how many. `frames` holds each hop's frame as captured, per flow of
    `trace.flows`, per packet, per hop."""
    w = PcapngWriter(path)
    for o in others:
        w.add(o.point, o.frame.linktype, o.time, o.frame.data, o.frame.orig_len, f"not followed: {o.why}")
    n = len(others)
    for fi, (flow, packets) in enumerate(zip(trace.flows, frames, strict=True), 1):
        for pi, (p, raws) in enumerate(zip(flow.packets, packets, strict=True), 1):
            again = " (retransmission)" if p.retransmission else ""
            for hi, (h, raw) in enumerate(zip(p.hops, raws, strict=True), 1):
                note = ""
                if h.encap is not None:
                    note = f", encapsulated {h.encap.type.upper()}" + (f" VNI {h.encap.vni}" if h.encap.vni is not None else "")
                ttl = f", TTL {h.ttl}" if h.ttl is not None else ""
                w.add(h.point, raw.linktype, h.time, raw.data, raw.orig_len,
                      f"flow {fi} packet {pi} hop {hi}/{len(raws)} {raw.summary}{again}{ttl}{note}: {h.why}"
                      f"{_further(p) if hi == len(raws) else ''}", h.direction)
                n += 1
    w.close()
    return n


def _further(p) -> str:
    """What the last hop's comment adds about the way on: where the packet was not seen next."""
    stopped = p.stopped  # (a gap is a point it passed: not where it ended)
    if not stopped:
        return ""
    how = "not captured" if stopped[0] in p.not_captured else "not seen"
    return f"; {how} further (next: {stopped[0]})"
