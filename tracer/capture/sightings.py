"""Sightings: what correlation keeps of one frame at one capture point, and "the same packet".

A sighting is a plain tuple, one per frame (no object, no attribute lookups on the hot path);
its fields are read by the names below, once each:

    (time, point, identity, ttl, code, ends, proto, tcp_flags, head, frame, bit)

T      capture time (seconds, the node's own clock)
P      the point's index
KEY    `identity` of the innermost packet: what stays the same at every point of its way
TTL    its TTL (hop limit); 0 for ARP, which has none
CODE   point | ttl << 16 | tunnels peeled << 24 in one int: what orders a packet's sightings,
       compared at once
ENDS   its addresses and ports as bytes (source IP, destination IP, then source and destination
       port when the protocol has ports; ARP's sender and target IP): `split_ends` reads them back
PROTO  the IP protocol (PROTO_ARP for ARP)
FLAGS  TCP flags (None for other protocols)
HEAD   the first 8 bytes of its payload (to spot HTTP)
FRAME  the decoded Frame when packets are kept, else None
BIT    1 << point

`from_frame` makes one from a decoded Frame; tracer.capture.fastpath makes them from pcap bytes.
"""

from __future__ import annotations

import struct

from tracer.decode import PROTO_ARP, PROTO_TCP, PROTO_UDP, Frame

T, P, KEY, TTL, CODE, ENDS, PROTO, FLAGS, HEAD, FRAME, BIT = range(11)
CALICO_MAC = b"\xee" * 6
"""The MAC Calico gives the host end of every pod veth (proxy-ARP answers with it)."""
MAX_IPS = 64
HTTP_STARTS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"HTTP/1.", b"CONNECT ")
"""How an HTTP/1 request or response begins: a flow whose payload starts so is HTTP."""

_pack_ports = struct.Struct("!HH").pack
tcp_key = struct.Struct("!HIIBI").pack
"""A TCP segment's identity: IP ID, seq, ack, flags, payload length, packed (see identity)."""


def identity(fr: Frame):
    """What stays the same for one packet at every point of its way (inner packet only).

    A TCP segment's is its IP ID, sequence and acknowledgement numbers, flags and payload length
    packed into bytes (tcp_key: one object, cheap to hash, compare and send between processes);
    the others' a tuple. An ARP packet's is all it says (operation, sender and target): the
    same request sent again is told apart by the time it is seen again at a point."""
    if fr.arp is not None:
        return (PROTO_ARP, *fr.arp)
    p = fr.proto
    if fr.fragment:
        return (p, fr.ip_id, -1, fr.payload_len, fr.ip_len)
    if p == PROTO_TCP:
        if fr.tcp_seq is None:  # (header cut short)
            return (p, fr.ip_id, fr.ip_len)
        return tcp_key(fr.ip_id, fr.tcp_seq, fr.tcp_ack, fr.tcp_flags, fr.payload_len)
    if p == PROTO_UDP:
        off = fr.payload_offset
        return (p, fr.ip_id, fr.payload_len, fr.data[off:off + 24] if off >= 0 else b"")
    return (p, fr.ip_id, fr.ip_len, fr.icmp_type, fr.icmp_code, fr.icmp_id, fr.icmp_seq)


def points_mask(obs: list[tuple]) -> int:
    """The points a packet's sightings were made at, as a bitmask (1 << point each)."""
    mask = 0
    for o in obs:
        mask |= o[BIT]
    return mask


def ends_of(fr: Frame) -> bytes:
    if fr.arp is not None:
        return fr.arp[2] + fr.arp[4]
    e = fr.ip_src + fr.ip_dst
    return e + _pack_ports(fr.sport, fr.dport) if fr.sport is not None and fr.dport is not None else e


def from_frame(ts: float, point: int, fr: Frame, ends: bytes, keep: bool) -> tuple:
    """The sighting of a decoded IP or ARP frame (PointStats.add_frame gives its ends)."""
    if fr.arp is not None:
        return (ts, point, identity(fr), 0, point | len(fr.tunnels) << 24, ends, PROTO_ARP, None, b"",
                fr if keep else None, 1 << point)
    po = fr.payload_offset
    head = fr.data[po:po + 8] if fr.payload_len and po >= 0 else b""
    return (ts, point, identity(fr), fr.ttl, point | fr.ttl << 16 | len(fr.tunnels) << 24, ends, fr.proto,
            fr.tcp_flags, head, fr if keep else None, 1 << point)


def split_ends(e: bytes) -> tuple[tuple, tuple]:
    """`ends` back to ((source ip, port), (destination ip, port)); port None without ports."""
    n = len(e)
    if n in (12, 36):
        h = (n - 4) // 2
        sp, dp = struct.unpack_from("!HH", e, 2 * h)
        return (e[:h], sp), (e[h:2 * h], dp)
    h = n // 2
    return (e[:h], None), (e[h:], None)


class PointStats:
    """What a point's frames tell about it, gathered while reading (see tracer.capture.reader.PointState).

    The inner IPs (the first 64) and whether Calico's MAC ee:ee:ee:ee:ee:ee shows up are looked
    at on the first frame of each address/port pair at the point (and on every non-IP frame):
    what they tell does not change from one packet of a flow to the next.
    """

    __slots__ = ("frames", "undecoded", "encapsulated", "calico_mac", "ips", "ends", "first", "last")

    def __init__(self):
        self.frames = self.undecoded = self.encapsulated = 0
        self.first = float("inf")
        self.last = float("-inf")
        """Times of the point's first and last frames (its own clock): when it was capturing.
        Kept up to date as the reader reads ahead: `last` is never behind what has been merged."""
        self.calico_mac = False
        self.ips: set[bytes] = set()
        self.ends: set[bytes] = set()

    def saw(self, src: bytes, dst: bytes, mac_a: bytes | None, mac_b: bytes | None) -> None:
        """The first frame of a new address/port pair: its inner IPs and MACs."""
        if len(self.ips) < MAX_IPS:
            self.ips.add(src)
            self.ips.add(dst)
        if not self.calico_mac and (mac_a == CALICO_MAC or mac_b == CALICO_MAC):
            self.calico_mac = True

    def widen(self, first: float, last: float) -> None:
        """The point captured (at least) from `first` to `last` too."""
        if first < self.first:
            self.first = first
        if last > self.last:
            self.last = last

    def add_frame(self, fr: Frame, time: float) -> bytes | None:
        """Count a decoded frame; its `ends` if it is an IP or ARP packet the correlator follows, else None."""
        self.frames += 1
        if time < self.first:
            self.first = time
        if time > self.last:
            self.last = time
        if fr.tunnels:
            self.encapsulated += 1
        if fr.undecoded is not None and fr.arp is None:
            self.undecoded += 1
        if fr.arp is not None:  # (its addresses are no flow's: not the point's IPs)
            if not self.calico_mac and (fr.eth_src == CALICO_MAC or fr.eth_dst == CALICO_MAC):
                self.calico_mac = True
            return ends_of(fr)
        if fr.ip_src is None or fr.proto is None:
            if not self.calico_mac and (fr.eth_src == CALICO_MAC or fr.eth_dst == CALICO_MAC):
                self.calico_mac = True
            return None
        e = ends_of(fr)
        if e not in self.ends:
            self.ends.add(e)
            self.saw(fr.ip_src, fr.ip_dst, fr.eth_src, fr.eth_dst)
        return e
