"""The live view's state: frames from the agents as they come, each packet found again by the
identity correlation uses (tracer.capture.sightings.identity: what stays the same at every point,
NAT included), each cell marked with what changed since the point the packet was seen at before
(tracer.correlate.changes.hop_changes, as in analyze's hops). `snapshot()` gives the model values
the live grid shows (the newest request only).

A request may take more than one way: a Service's other endpoints (kube-proxy picks one per
connection) and, for a URL by name, the DNS lookup's way to the DNS pod. The grid's columns are
the points of all of them (the request's way first, then what the others add); each packet is
on the way whose pod it reaches (its destination after the DNAT, or the source of an answer),
and its cells off that way are left out. A request is the DNS lookups its resolver made and the
connection that followed."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.capture.sightings import identity
from tracer.correlate.changes import hop_changes, packet_label
from tracer.decode import Frame, decode, fmt_ip
from tracer.model import Way, WayPoint
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
    """The connection or lookup (protocol, client port): one TCP connection per request."""
    seen: dict[str, Frame] = field(default_factory=dict)
    """Point id -> the frame as captured there."""
    way: Way | None = None
    """The way it is on, once a frame tells (before a DNAT only the ClusterIP is known)."""

    def cells(self, points: list[str]) -> tuple[LiveCell | None, ...]:
        """Its cell at each of `points` (its way's, in the way's order); what changed is judged
        in the order the packet went (the response takes the way backwards)."""
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
    others: tuple[Way, ...] = ()
    """The ways to a Service's other endpoints."""
    dns: tuple[Way, ...] = ()
    """The DNS lookup's ways (one per DNS pod)."""
    dns_ip: str = ""
    """The DNS Service's ClusterIP (what the resolver asks before the DNAT)."""
    packets: dict[object, LivePacket] = field(default_factory=dict)
    conversations: list[tuple] = field(default_factory=list)
    curls: list[CurlResult] = field(default_factory=list)
    frames: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ways = (self.way, *self.others, *self.dns)
        self._by_ip = {w.dst.pod.ip: w for w in self._ways}
        far = set(self._by_ip)
        if self.way.service is not None:
            far.add(self.way.service.cluster_ip)
        if self.dns_ip:
            far.add(self.dns_ip)
        self._far = far
        self._dns_ips = {w.dst.pod.ip for w in self.dns} | ({self.dns_ip} if self.dns_ip else set())
        columns: dict[str, WayPoint] = {}
        for w in self._ways:
            for p in w.points:
                columns.setdefault(p.id, p)
        self._columns = columns

    def add_frame(self, point: str, linktype: int, data: bytes) -> None:
        fr = decode(linktype, data)
        if fr.ip_src is None or fr.sport is None:
            return
        self.frames += 1
        src, dst = fmt_ip(fr.ip_src), fmt_ip(fr.ip_dst)
        key = identity(fr)
        pkt = self.packets.get(key)
        if pkt is None:  # (a packet known already is taken whatever its addresses: after a SNAT too)
            client_ip = self.way.src.pod.ip
            request = src == client_ip
            if not request and dst != client_ip:
                return
            far = dst if request else src
            if far not in self._far:
                return
            client_port = fr.sport if request else fr.dport
            conv = ("dns" if far in self._dns_ips else "tcp", fr.proto, client_port)
            pkt = self.packets[key] = LivePacket(summary=packet_label(fr), request=request, conversation=conv)
            if conv not in self.conversations:
                self.conversations.append(conv)
        if pkt.way is None:
            far = dst if pkt.request else src
            if far in self._by_ip:
                pkt.way = self._by_ip[far]
        pkt.seen.setdefault(point, fr)

    def _way_of(self, pkt: LivePacket) -> Way:
        if pkt.way is not None:
            return pkt.way
        return self.dns[0] if pkt.conversation[0] == "dns" else self.way

    def _shown(self) -> list[tuple]:
        """The newest request's conversations: its lookups and the connection after them."""
        groups: list[list[tuple]] = []
        for conv in self.conversations:
            if not groups or groups[-1][-1][0] != "dns":  # (after a connection: the next request)
                groups.append([])
            groups[-1].append(conv)
        return [c for g in groups[-SHOWN_REQUESTS:] for c in g]

    def snapshot(self) -> LiveSnapshot:
        columns = list(self._columns)
        several = len(self._ways) > 1
        rows = []
        for conv in self._shown():
            for pkt in self.packets.values():
                if pkt.conversation != conv:
                    continue
                way = self._way_of(pkt)
                mine = [p.id for p in way.points]
                cells = dict(zip(mine, pkt.cells(mine)))
                rows.append(LiveRow(summary=pkt.summary, request=pkt.request,
                                    cells=tuple(cells.get(c) for c in columns),
                                    on_way=tuple(c in cells for c in columns) if several else (),
                                    to=way.dst.pod.name if several else ""))
        return LiveSnapshot(way=self.way, url=self.url, backend=self.backend, rows=tuple(rows), requests=len(self.curls),
                            last_curl=self.curls[-1] if self.curls else None, frames=self.frames,
                            errors=tuple(self.errors), points=tuple(self._columns.values()))
