"""The trace model: what tracer found, as plain frozen values (render and JSON know only these).

The inner packet is the identity of a packet across capture points; the tunnel that carries it
at a point is an optional nested `Encapsulation` of that hop (as in hubble's flows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA = "tracer.trace/v1"
ROLES = ("pod-veth", "bridge", "tunnel", "underlay", "unknown")


@dataclass(frozen=True, kw_only=True)
class CapturePoint:
    """A place where packets were captured: one interface of one node."""

    id: str
    """`node/interface`, e.g. `worker1/eth1`."""
    node: str
    """The node (or pod) whose network namespace holds the interface."""
    interface: str
    """Interface name, e.g. `cali8d1f2b0a6c3`, `vxlan.calico`, `eth1`."""
    role: str = "unknown"
    """pod-veth | bridge | tunnel | underlay | unknown (see `tracer.capture.roles`)."""
    packets: int = 0
    """Frames read at this point."""
    undecoded: int = 0
    """Frames that could not be decoded down to an IP or ARP packet (LLDP, cut short, ...)."""
    files: tuple[str, ...] = ()
    """Capture files this point was read from."""


@dataclass(frozen=True, kw_only=True)
class Encapsulation:
    """The tunnel around the inner packet at one hop (outer headers)."""

    type: str
    """vxlan | geneve | ipip | gre | erspan"""
    vni: int | None
    """VXLAN/Geneve network identifier, GRE key or ERSPAN session."""
    outer_eth_src: str | None
    outer_eth_dst: str | None
    outer_ip_src: str
    outer_ip_dst: str
    udp_sport: int | None
    udp_dport: int | None
    bytes_added: int
    """Bytes the encapsulation adds on the wire (50 for VXLAN over IPv4)."""
    outer_ttl: int | None = None


@dataclass(frozen=True, kw_only=True)
class Carriage:
    """How a packet's bytes were carried at a hop where it was not one frame as sent: TSO/GSO cut
    its sender's super-frame into frames, GRO merged frames into larger ones."""

    frames: int
    """Frames that carried the packet's bytes here."""
    frame_bytes: tuple[int, ...]
    """Their lengths on the wire (outer headers included); payload lengths where frames were not kept."""
    bytes: int
    """The packet's TCP payload bytes these frames carried (all of them: it reached this point)."""
    how: str
    """segmented | merged | recut | fragmented | reassembled: cut into more frames than at the
    hop before, merged into fewer (or with other packets' bytes), as many cut otherwise; in IP
    fragments here (the packet larger than the MTU, DF not set), put together again."""
    by: str
    """What does that: `TSO/GSO` (segmentation offload, in the NIC or the kernel's GSO), `GRO`
    (receive offload), `IP` (fragmentation)."""
    note: str
    """One sentence for the views, e.g. `segmented into 19 frames (TSO/GSO)`."""


@dataclass(frozen=True, kw_only=True)
class Arp:
    """An ARP packet's own fields (the hop's ip_src and ip_dst are its sender and target IP)."""

    op: str
    """request | reply (or `op N` for another operation)"""
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str


@dataclass(frozen=True, kw_only=True)
class Hop:
    """One sighting of a packet at one capture point, with what changed since the previous hop."""

    point: str
    """Capture point id (`node/interface`)."""
    time: float
    """Capture timestamp (the node's own clock, seconds since the epoch)."""
    offset: float
    """Seconds since the packet's first hop, node clock offsets corrected."""
    direction: str
    """in | out | ?: into the node through this interface, or out of it."""
    eth_src: str | None
    eth_dst: str | None
    ip_src: str
    """The packet's source IP (ARP: the sender's)."""
    ip_dst: str
    """Its destination IP (ARP: the target's, the address asked for)."""
    sport: int | None
    dport: int | None
    ttl: int | None
    """The inner packet's TTL or hop limit (None for ARP, which has none)."""
    encap: Encapsulation | None
    changes: tuple[str, ...] = ()
    """What changed against the previous hop: mac, ttl, encap, decap, dnat, snat, ..."""
    why: str = ""
    """One sentence: why it changed (routing, VXLAN, kube-proxy, ...)."""
    frame_bytes: int | None = None
    """The frame's length on the wire at this point, outer headers included (tunnel and link)."""
    ip_id: int | None = None
    """The inner IP header's ID at this point (IPv4; None for IPv6 and ARP)."""
    arp: Arp | None = None
    """For an ARP packet: what it asks or answers."""
    carried: Carriage | None = None
    """How the packet's bytes were carried here when not as one frame as its sender's
    (segmented, merged); None: one frame, as at the hop before."""


@dataclass(frozen=True, kw_only=True)
class RawFrame:
    """A hop's frame as it was captured: what the merged pcapng writes (the Hop says the rest)."""

    linktype: int
    data: bytes
    orig_len: int
    summary: str = ""
    """The frame in words as it is at this hop (its own addresses: NAT shows), e.g. `SYN a:p -> b:q`."""


@dataclass(frozen=True, kw_only=True)
class OtherFrame:
    """A frame that is no packet of a flow (not IP or ARP, or not decodable): the merged pcapng
    writes it too, saying why it was not followed."""

    point: str
    time: float
    frame: RawFrame
    why: str


@dataclass(frozen=True, kw_only=True)
class Dns:
    """A DNS message a packet carries (tracer.decode.dns): its question, answers, response code."""

    id: int
    response: bool
    name: str
    """The question's name, e.g. `httpbin.default.svc.cluster.local`."""
    type: str
    """The question's type, e.g. `A`."""
    rcode: str
    """NOERROR, NXDOMAIN, SERVFAIL, ... (a query's is NOERROR)."""
    answers: tuple[str, ...] = ()
    """Each `TYPE data`, e.g. `A 10.152.183.50`."""
    truncated: bool = False


@dataclass(frozen=True, kw_only=True)
class PacketTrace:
    """One packet followed across the capture points, hops in the order of its way."""

    direction: str
    """request (client -> server) | response"""
    tcp_flags: str | None
    ip_id: int
    payload_bytes: int
    hops: tuple[Hop, ...]
    last_seen: str
    """The last point on the way that saw the packet."""
    missing: tuple[str, ...] = ()
    """Points on the way (after the first sighting) that did not see it."""
    not_captured: tuple[str, ...] = ()
    """Those of `missing` whose node was not capturing when the packet went by (its captures
    begin later or end sooner): the packet may have passed them unseen."""
    gaps: tuple[str, ...] = ()
    """Those of `missing` the packet passed without being captured there: a later point of its way
    saw it (a frame the capture dropped, not a loss)."""
    hint: str = ""
    """For a packet that stopped: what to look at, from the roles of where it was last seen and
    where it was not seen next ("" when they tell nothing, or when the next point's node was
    not capturing then)."""
    summary: str = ""
    """Short description, e.g. `SYN 10.1.38.203:56312 -> 10.1.201.77:80`."""
    label: str = ""
    """Shorter, without addresses (a grid's columns say them), e.g. `SYN`, `PSH-ACK GET /get`."""
    retransmission: bool = False
    """A TCP segment sent again: data, SYN or FIN beginning before the end of what its direction
    had sent (Wireshark's rule; not a keep-alive, not the same IP packet seen twice, not a RST)."""
    dns: Dns | None = None
    """The DNS message it carries (a query or an answer), if it is one."""
    not_visible: tuple[str, ...] = ()
    """Points of its way it was not seen at that its data path may carry packets past unseen
    (path.json's `bypass`, e.g. an eBPF redirect into the pod): not visible there, not lost
    (not in `missing`)."""
    tcp_seq: int | None = None
    """TCP: its sequence number as its sender sent it (absolute, as tcpdump -S and tshark's
    tcp.seq_raw say it): with payload_bytes, the range of its direction's bytes it carries."""

    @property
    def stopped(self) -> tuple[str, ...]:
        """The points of `missing` it did not reach: it was lost before them (`gaps` aside)."""
        return tuple(m for m in self.missing if m not in self.gaps)

    @property
    def headline(self) -> str:
        """The summary as the views and the merged pcapng's comments give it."""
        return self.summary + " (retransmission)" if self.retransmission else self.summary


@dataclass(frozen=True, kw_only=True)
class Nat:
    original: str
    """`ip:port` as the client addressed it (DNAT) or as the client sent it (SNAT)."""
    translated: str
    kind: str = "dnat"
    """dnat | snat"""
    point: str = ""
    """The first point at which the translated address was seen."""
    previous_point: str | None = None
    """The point before it on the request's way, where the address was not translated yet: the
    translation happened between the two, on `point`'s node (None: `point` is the first seen)."""

    @property
    def node(self) -> str:
        return self.point.split("/", 1)[0]

    @property
    def where(self) -> str:
        """By what, on which node, between which points: `kube-proxy, worker1: cali… -> vxlan.calico`."""
        by = f"{'kube-proxy' if self.kind == 'dnat' else 'masquerade'}, {self.node}"
        if self.previous_point is None:
            return f"{by}: first seen at {self.point}"
        before_node, _, before = self.previous_point.partition("/")
        _, _, here = self.point.partition("/")
        return f"{by}: {before if before_node == self.node else self.previous_point} -> {here}"


@dataclass(frozen=True, kw_only=True)
class SegmentStats:
    """Between two consecutive points of a way: how many packets crossed and how fast."""

    src: str
    dst: str
    packets: int
    lost: int
    latency_median: float | None
    latency_p99: float | None
    not_captured: int = 0
    """Packets that crossed the segment without being captured at its end (seen further on)."""
    bytes: int = 0
    """TCP payload bytes of the packets that crossed it (however the frames carried them)."""
    bytes_lost: int = 0
    """TCP payload bytes of the packets lost in it."""


@dataclass(frozen=True, kw_only=True)
class FlowSummary:
    packets: int
    """Packets of this flow (each counted once, however many points saw it)."""
    reached_end: int
    """Packets seen at the last point of their way."""
    per_point: dict[str, int] = field(default_factory=dict)
    way: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The ordered points of each direction (request, response)."""
    stopped: dict[str, int] = field(default_factory=dict)
    """Point -> packets whose last sighting was there although the way goes on."""
    not_captured: int = 0
    """Of the stopped packets, those whose next point's node was not capturing then: they may
    have gone on unseen (captures started at different times)."""
    gaps: int = 0
    """Packets seen before and after a point of their way but not at it (not lost: not captured)."""
    not_visible: int = 0
    """Packets a point of their way did not see that their data path may bypass (not lost)."""
    bytes: int = 0
    """TCP payload bytes of its packets (each once, as their senders handed them over)."""
    bytes_per_point: dict[str, int] = field(default_factory=dict)
    """Point -> TCP payload bytes of the packets seen there (whatever frames carried them)."""
    bytes_reached_end: int = 0
    """TCP payload bytes of the packets seen at the last point of their way."""


@dataclass(frozen=True, kw_only=True)
class Flow:
    client: str
    server: str
    protocol: str
    nat: Nat | None
    packets: tuple[PacketTrace, ...] = ()
    summary: FlowSummary | None = None
    http: bool = False
    dns_name: str = ""
    """The name a DNS answer seen before this flow gave for the address its client asked for
    (before any DNAT), e.g. `httpbin.default.svc.cluster.local`; "" when none was seen."""


@dataclass(frozen=True, kw_only=True)
class Trace:
    """Everything tracer found in one set of captures."""

    points: tuple[CapturePoint, ...]
    clock_offsets: dict[str, float]
    """Node -> seconds its clock is ahead of the reference node (the first node); estimated from traffic."""
    flows: tuple[Flow, ...]
    reference_node: str | None = None
    segments: tuple[SegmentStats, ...] = ()
    warnings: tuple[str, ...] = ()
    total_packets: int = 0
    matched_packets: int = 0
    """Distinct packets (identities) found."""


def duration(seconds: float | None) -> str:
    """A time difference as the views write it: 14µs, 2.31ms, 1.250s."""
    if seconds is None:
        return "-"
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.3f}s"
