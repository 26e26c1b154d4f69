"""The live view's state: frames from the agents as they come, each packet found again by the
identity correlation uses (tracer.capture.sightings.identity: what stays the same at every point,
NAT included), each cell marked with what changed since the point the packet was seen at before
(tracer.correlate.changes.hop_changes, as in analyze's hops). `snapshot()` gives the model values
the live grid shows (the newest request only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.capture.sightings import identity
from tracer.correlate.changes import hop_changes, packet_label
from tracer.decode import Frame, decode, fmt_ip
from tracer.model import Way
from tracer.model.follow import CurlResult
from tracer.model.live import LiveCell, LiveRow, LiveSnapshot

SHOWN_REQUESTS = 1


@dataclass
class LivePacket:
    """One packet of the traced flow and where it has been seen so far."""

    summary: str
    request: bool
    """client -> server (the request direction) or the response."""
    conversation: tuple
    """The TCP connection (client port): one per request."""
    seen: dict[str, Frame] = field(default_factory=dict)
    """Point id -> the frame as captured there."""

    def cells(self, points: list[str]) -> tuple[LiveCell | None, ...]:
        """Its cell at each point, in the way's order; what changed is judged in the order the
        packet went (the response takes the way backwards)."""
        order = points if self.request else points[::-1]
        cells: dict[str, LiveCell | None] = {}
        prev = None
        for pid in order:
            fr = self.seen.get(pid)
            if fr is None:
                cells[pid] = None
                continue
            changes = () if prev is None else hop_changes(prev, fr)
            tunnel = None
            if "encap" in changes:
                t = fr.tunnels[-1]
                tunnel = str(t.vni if t.vni is not None else t.type)
            cells[pid], prev = LiveCell(changes=changes, ttl=fr.ttl, tunnel=tunnel), fr
        return tuple(cells[p] for p in points)


@dataclass
class LiveState:
    """Everything the live view shows; fed with frames and curl results, read as `snapshot()`."""

    way: Way
    url: str = ""
    backend: str = ""
    packets: dict[object, LivePacket] = field(default_factory=dict)
    conversations: list[tuple] = field(default_factory=list)
    curls: list[CurlResult] = field(default_factory=list)
    frames: int = 0
    errors: list[str] = field(default_factory=list)

    def add_frame(self, point: str, linktype: int, data: bytes) -> None:
        fr = decode(linktype, data)
        if fr.ip_src is None or fr.sport is None:
            return
        self.frames += 1
        src, dst = fmt_ip(fr.ip_src), fmt_ip(fr.ip_dst)
        client_ip = self.way.src.pod.ip
        request = src == client_ip
        client_port = fr.sport if request else fr.dport
        conv = (client_port,)
        key = identity(fr)
        pkt = self.packets.get(key)
        if pkt is None:
            if dst not in (client_ip, self.way.dst.pod.ip):
                return
            pkt = self.packets[key] = LivePacket(summary=packet_label(fr), request=request, conversation=conv)
            if conv not in self.conversations:
                self.conversations.append(conv)
        pkt.seen.setdefault(point, fr)

    def snapshot(self) -> LiveSnapshot:
        points = [p.id for p in self.way.points]
        rows = tuple(LiveRow(summary=pkt.summary, request=pkt.request, cells=pkt.cells(points))
                     for conv in self.conversations[-SHOWN_REQUESTS:]
                     for pkt in self.packets.values() if pkt.conversation == conv)
        return LiveSnapshot(way=self.way, url=self.url, backend=self.backend, rows=rows, requests=len(self.curls),
                            last_curl=self.curls[-1] if self.curls else None, frames=self.frames,
                            errors=tuple(self.errors))
