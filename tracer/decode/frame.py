"""Frame decoder: link layer -> tunnels -> the innermost IP packet and its L4 header.

One pass over the bytes with dispatch tables (ethertype, IP protocol, UDP port -> decoder), in
the manner of dpkt, tuned for speed: addresses stay `bytes` (formatted only for display),
and a frame is decoded exactly once. What cannot be decoded further stays raw: `Frame.undecoded`
says why, `Frame.truncated` says the capture cut it. Decoding never raises on any input.

Tunnels (VXLAN, Geneve, GRE incl. ERSPAN and transparent Ethernet bridging, IP-in-IP, IPv6-in-IP)
are peeled outermost first into `Frame.tunnels`; the fields of `Frame` itself are always those of
the innermost packet, which is the packet's identity across capture points.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from tracer.capture.pcapio import (
    LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL, LINKTYPE_RAW,
)

VXLAN_PORTS = frozenset({4789, 8472})
GENEVE_PORT = 6081
MAX_TUNNEL_DEPTH = 8

ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
ETH_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
ETH_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows
PROTO_ICMP, PROTO_IPIP, PROTO_TCP, PROTO_UDP, PROTO_IPV6, PROTO_GRE, PROTO_ICMPV6 = 1, 4, 6, 17, 41, 47, 58
IPV6_EXT_HEADERS = frozenset({0, 43, 44, 60, 51})

# SLL packet types (direction as the capturing host saw it)
SLL_PKTTYPES = {0: "in", 1: "in", 2: "in", 3: "other", 4: "out"}

_u16 = struct.Struct("!H").unpack_from
_ipv4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_tcp = struct.Struct("!HHIIBB").unpack_from
_udp = struct.Struct("!HHH").unpack_from
_vni = struct.Struct("!I").unpack_from

TCP_FLAG_LETTERS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("A", 0x10), ("U", 0x20), ("E", 0x40), ("C", 0x80))


class Tunnel:
    """One encapsulation layer: the outer headers that carry the next, inner frame."""

    __slots__ = ("type", "vni", "outer_eth_src", "outer_eth_dst", "outer_ip_src", "outer_ip_dst",
                 "outer_ttl", "udp_sport", "udp_dport", "bytes_added", "protocol")

    def __init__(self, type: str, eth_src, eth_dst, ip_src, ip_dst, ttl, bytes_added: int):
        self.type = type
        """vxlan | geneve | gre | erspan | ipip"""
        self.vni: int | None = None
        self.outer_eth_src: bytes | None = eth_src
        self.outer_eth_dst: bytes | None = eth_dst
        self.outer_ip_src: bytes = ip_src
        self.outer_ip_dst: bytes = ip_dst
        self.outer_ttl: int = ttl
        self.udp_sport: int | None = None
        self.udp_dport: int | None = None
        self.bytes_added = bytes_added
        """Header bytes in front of the inner frame, from the start of the outer frame."""
        self.protocol: int | None = None  # GRE protocol type


class Frame:
    """The decoded view of one captured frame. Addresses are bytes; see `fmt_mac`/`fmt_ip`."""

    __slots__ = (
        "linktype", "caplen", "orig_len", "sll_dir", "ifindex", "eth_src", "eth_dst", "vlans", "ethertype",
        "arp", "tunnels", "ip_version", "ip_src", "ip_dst", "ttl", "ip_id", "proto", "ip_len",
        "ip_offset", "fragment", "sport", "dport", "tcp_seq", "tcp_ack", "tcp_flags", "icmp_type",
        "icmp_code", "icmp_id", "icmp_seq", "payload_len", "payload_offset", "l4_offset",
        "undecoded", "truncated", "data",
    )

    def __init__(self, linktype: int, caplen: int, orig_len: int):
        self.linktype = linktype
        self.caplen = caplen
        self.orig_len = orig_len
        self.sll_dir: str | None = None
        self.ifindex: int | None = None
        """Linux cooked v2: the interface the frame was captured on (tcpdump -i any)."""
        self.eth_src: bytes | None = None
        self.eth_dst: bytes | None = None
        self.vlans: tuple[int, ...] = ()
        self.ethertype: int | None = None
        self.arp: tuple | None = None  # (op, sender mac, sender ip, target mac, target ip)
        self.tunnels: list[Tunnel] = []
        self.ip_version = 0
        self.ip_src: bytes | None = None
        self.ip_dst: bytes | None = None
        self.ttl: int | None = None
        self.ip_id: int | None = None
        self.proto: int | None = None
        self.ip_len = 0            # length of the IP packet per its header (0 = unknown)
        self.ip_offset = -1
        self.fragment = False      # a non-first fragment: no L4 header
        self.sport: int | None = None
        self.dport: int | None = None
        self.tcp_seq: int | None = None
        self.tcp_ack: int | None = None
        self.tcp_flags: int | None = None
        self.icmp_type: int | None = None
        self.icmp_code: int | None = None
        self.icmp_id: int | None = None
        self.icmp_seq: int | None = None
        self.payload_len: int | None = None
        self.payload_offset = -1
        self.l4_offset = -1
        self.undecoded: str | None = None
        self.truncated = False
        self.data: bytes = b""

    def _reset_inner(self) -> None:
        """A tunnel was found: what was decoded so far becomes its outer part."""
        self.eth_src = self.eth_dst = None
        self.vlans = ()
        self.ip_version = 0
        self.ip_src = self.ip_dst = None
        self.ttl = self.ip_id = self.proto = None
        self.sport = self.dport = None
        self.payload_len = None
        self.payload_offset = self.l4_offset = -1
        self.ip_len = 0
        self.ip_offset = -1
        self.fragment = False

    @property
    def encapsulated(self) -> bool:
        return bool(self.tunnels)

    def flags_str(self) -> str:
        return tcp_flags_str(self.tcp_flags)


def decode(linktype: int, data: bytes, orig_len: int | None = None,
           vxlan_ports: frozenset[int] = VXLAN_PORTS) -> Frame:
    """Decode one frame. Never raises: bad or short bytes end decoding with a reason."""
    fr = Frame(linktype, len(data), len(data) if orig_len is None else orig_len)
    fr.data = data
    try:
        _decode_link(fr, linktype, data, vxlan_ports)
    except (struct.error, IndexError, ValueError):  # a bound check missed: treat as cut short
        fr.truncated = True
        fr.undecoded = fr.undecoded or "malformed header"
    return fr


def _decode_link(fr: Frame, linktype: int, data: bytes, vxlan_ports) -> None:
    n = len(data)
    if linktype == LINKTYPE_ETHERNET:
        _ethernet(fr, data, 0, vxlan_ports, 0)
    elif linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            fr.truncated, fr.undecoded = True, "Linux cooked header cut short"
            return
        pkttype, hatype, alen = struct.unpack_from("!HHH", data)
        fr.sll_dir = SLL_PKTTYPES.get(pkttype)
        if hatype == 1 and alen == 6:
            fr.eth_src = data[6:12]
        _ethertype(fr, data, 16, _u16(data, 14)[0], vxlan_ports, 0)
    elif linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            fr.truncated, fr.undecoded = True, "Linux cooked v2 header cut short"
            return
        proto, _, fr.ifindex, hatype, pkttype, alen = struct.unpack_from("!HHIHBB", data)
        fr.sll_dir = SLL_PKTTYPES.get(pkttype)
        if hatype == 1 and alen == 6:
            fr.eth_src = data[12:18]
        _ethertype(fr, data, 20, proto, vxlan_ports, 0)
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        _raw_ip(fr, data, 0, vxlan_ports, 0)
    elif linktype == LINKTYPE_NULL:
        if n < 4:
            fr.truncated, fr.undecoded = True, "loopback header cut short"
            return
        family = struct.unpack_from("<I", data)[0]
        if family > 0xFFFF:
            family = struct.unpack_from(">I", data)[0]
        if family == 2:
            _ipv4_packet(fr, data, 4, vxlan_ports, 0)
        elif family in (10, 24, 28, 30):
            _ipv6_packet(fr, data, 4, vxlan_ports, 0)
        else:
            fr.undecoded = f"loopback address family {family}"
    else:
        fr.undecoded = f"link type {linktype} not supported"


def _raw_ip(fr: Frame, data: bytes, off: int, vxlan_ports, depth: int) -> None:
    if off >= len(data):
        fr.truncated, fr.undecoded = True, "IP header cut short"
        return
    v = data[off] >> 4
    if v == 4:
        _ipv4_packet(fr, data, off, vxlan_ports, depth)
    elif v == 6:
        _ipv6_packet(fr, data, off, vxlan_ports, depth)
    else:
        fr.undecoded = f"IP version {v}"


def _ethernet(fr: Frame, data: bytes, off: int, vxlan_ports, depth: int) -> None:
    if len(data) < off + 14:
        fr.truncated, fr.undecoded = True, "Ethernet header cut short"
        if len(data) >= off + 12:
            fr.eth_dst, fr.eth_src = data[off:off + 6], data[off + 6:off + 12]
        return
    fr.eth_dst = data[off:off + 6]
    fr.eth_src = data[off + 6:off + 12]
    _ethertype(fr, data, off + 14, _u16(data, off + 12)[0], vxlan_ports, depth)


def _ethertype(fr: Frame, data: bytes, off: int, etype: int, vxlan_ports, depth: int) -> None:
    vlans = []
    while etype in ETH_VLAN:
        if len(data) < off + 4:
            fr.truncated, fr.undecoded = True, "VLAN tag cut short"
            fr.vlans = tuple(vlans)
            return
        vlans.append(_u16(data, off)[0] & 0x0FFF)
        etype = _u16(data, off + 2)[0]
        off += 4
    if vlans:
        fr.vlans = tuple(vlans)
    fr.ethertype = etype
    if etype == ETH_IPV4:
        _ipv4_packet(fr, data, off, vxlan_ports, depth)
    elif etype == ETH_IPV6:
        _ipv6_packet(fr, data, off, vxlan_ports, depth)
    elif etype == ETH_ARP:
        _arp(fr, data, off)
    elif etype <= 1500:
        fr.undecoded = "IEEE 802.3 frame (LLC)"
    else:
        fr.undecoded = f"ethertype {etype:#06x}"


def _arp(fr: Frame, data: bytes, off: int) -> None:
    if len(data) < off + 28:
        fr.truncated, fr.undecoded = True, "ARP cut short"
        return
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", data, off)
    if htype != 1 or ptype != ETH_IPV4 or hlen != 6 or plen != 4:
        fr.undecoded = "ARP for other than Ethernet/IPv4"
        return
    fr.arp = (op, data[off + 8:off + 14], data[off + 14:off + 18], data[off + 18:off + 24], data[off + 24:off + 28])


def _ipv4_packet(fr: Frame, data: bytes, off: int, vxlan_ports, depth: int) -> None:
    n = len(data)
    if n < off + 20:
        fr.truncated, fr.undecoded = True, "IPv4 header cut short"
        return
    vihl, _tos, total, ipid, frag, ttl, proto, _csum, src, dst = _ipv4(data, off)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        fr.undecoded = "bad IPv4 header"
        return
    fr.ip_version = 4
    fr.ip_src, fr.ip_dst, fr.ttl, fr.ip_id, fr.proto = src, dst, ttl, ipid, proto
    fr.ip_offset = off
    if total == 0:
        # TSO/BIG TCP super-frames carry 0: the packet is as long as the frame (as tcpdump reads it).
        total = fr.orig_len - (fr.caplen - (n - off)) - off if fr.orig_len >= fr.caplen else n - off
    fr.ip_len = total
    if frag & 0x1FFF:
        fr.fragment = True
        fr.payload_len = max(total - ihl, 0)
        return
    _l4(fr, data, off + ihl, proto, total - ihl, vxlan_ports, depth)


def _ipv6_packet(fr: Frame, data: bytes, off: int, vxlan_ports, depth: int) -> None:
    n = len(data)
    if n < off + 40:
        fr.truncated, fr.undecoded = True, "IPv6 header cut short"
        return
    if data[off] >> 4 != 6:
        fr.undecoded = "bad IPv6 header"
        return
    plen, nxt, hlim = struct.unpack_from("!HBB", data, off + 4)
    fr.ip_version = 6
    fr.ip_src, fr.ip_dst, fr.ttl, fr.ip_id = data[off + 8:off + 24], data[off + 24:off + 40], hlim, 0
    fr.ip_offset = off
    fr.ip_len = plen + 40 if plen else fr.orig_len - (fr.caplen - n) - off
    pos = off + 40
    remaining = fr.ip_len - 40
    while nxt in IPV6_EXT_HEADERS:
        if n < pos + 8:
            fr.proto = nxt
            fr.truncated, fr.undecoded = True, "IPv6 extension header cut short"
            return
        if nxt == 44:  # fragment header: identification is the closest thing to an IP ID
            fr.ip_id = struct.unpack_from("!I", data, pos + 4)[0] & 0xFFFF
            if struct.unpack_from("!H", data, pos + 2)[0] & 0xFFF8:
                fr.proto = data[pos]
                fr.fragment = True
                fr.payload_len = max(remaining - 8, 0)
                return
            hlen = 8
        elif nxt == 51:  # AH: length in 4-octet units
            hlen = (data[pos + 1] + 2) * 4
        else:
            hlen = (data[pos + 1] + 1) * 8
        nxt = data[pos]
        pos += hlen
        remaining -= hlen
    fr.proto = nxt
    _l4(fr, data, pos, nxt, remaining, vxlan_ports, depth)


def _l4(fr: Frame, data: bytes, off: int, proto: int, l4_len: int, vxlan_ports, depth: int) -> None:
    n = len(data)
    fr.l4_offset = off
    if proto == PROTO_TCP:
        if n < off + 14:
            fr.truncated, fr.undecoded = True, "TCP header cut short"
            if n >= off + 4:
                fr.sport, fr.dport = struct.unpack_from("!HH", data, off)
            return
        sport, dport, seq, ack, doff, flags = _tcp(data, off)
        thl = (doff >> 4) * 4
        fr.sport, fr.dport, fr.tcp_seq, fr.tcp_ack, fr.tcp_flags = sport, dport, seq, ack, flags
        fr.payload_len = max(l4_len - thl, 0)
        fr.payload_offset = off + thl
        if n < off + thl:
            fr.truncated = True
    elif proto == PROTO_UDP:
        if n < off + 8:
            fr.truncated, fr.undecoded = True, "UDP header cut short"
            if n >= off + 4:
                fr.sport, fr.dport = struct.unpack_from("!HH", data, off)
            return
        sport, dport, ulen = _udp(data, off)
        fr.sport, fr.dport = sport, dport
        fr.payload_len = max((ulen or l4_len) - 8, 0)
        fr.payload_offset = off + 8
        if depth < MAX_TUNNEL_DEPTH:
            if dport in vxlan_ports or (sport in vxlan_ports and dport not in (GENEVE_PORT,)):
                _vxlan(fr, data, off + 8, sport, dport, vxlan_ports, depth)
            elif dport == GENEVE_PORT or sport == GENEVE_PORT:
                _geneve(fr, data, off + 8, sport, dport, vxlan_ports, depth)
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        fr.payload_len = max(l4_len - 8, 0)
        if n < off + 4:
            fr.truncated, fr.undecoded = True, "ICMP header cut short"
            return
        fr.icmp_type, fr.icmp_code = data[off], data[off + 1]
        if n >= off + 8 and fr.icmp_type in (0, 8, 128, 129):
            fr.icmp_id, fr.icmp_seq = struct.unpack_from("!HH", data, off + 4)
        fr.payload_offset = off + 8
    elif proto in (PROTO_IPIP, PROTO_IPV6) and depth < MAX_TUNNEL_DEPTH:
        _push_tunnel(fr, "ipip", off, False)
        (_ipv4_packet if proto == PROTO_IPIP else _ipv6_packet)(fr, data, off, vxlan_ports, depth + 1)
    elif proto == PROTO_GRE and depth < MAX_TUNNEL_DEPTH:
        _gre(fr, data, off, vxlan_ports, depth)
    else:
        fr.payload_len = max(l4_len, 0)
        fr.undecoded = f"IP protocol {proto}"


def _push_tunnel(fr: Frame, kind: str, inner_off: int, inner_eth: bool) -> Tunnel:
    # Bytes the encapsulation adds on the wire: outer IP .. start of the inner IP packet, which
    # is the textbook 50 for VXLAN over IPv4, 20 for IP-in-IP, 24 for plain GRE.
    added = inner_off - fr.ip_offset + (14 if inner_eth else 0)
    t = Tunnel(kind, fr.eth_src, fr.eth_dst, fr.ip_src, fr.ip_dst, fr.ttl, added)
    t.udp_sport, t.udp_dport = (fr.sport, fr.dport) if kind in ("vxlan", "geneve") else (None, None)
    fr.tunnels.append(t)
    fr._reset_inner()
    return t


def _vxlan(fr: Frame, data: bytes, off: int, sport: int, dport: int, vxlan_ports, depth: int) -> None:
    if len(data) < off + 8:
        fr.truncated, fr.undecoded = True, "VXLAN header cut short"
        return
    if not data[off] & 0x08:
        fr.undecoded = "UDP on a VXLAN port without the VXLAN I flag"
        return
    t = _push_tunnel(fr, "vxlan", off + 8, True)
    t.vni = _vni(data, off + 4)[0] >> 8
    _ethernet(fr, data, off + 8, vxlan_ports, depth + 1)


def _geneve(fr: Frame, data: bytes, off: int, sport: int, dport: int, vxlan_ports, depth: int) -> None:
    if len(data) < off + 8:
        fr.truncated, fr.undecoded = True, "Geneve header cut short"
        return
    if data[off] >> 6 != 0:
        fr.undecoded = f"Geneve version {data[off] >> 6}"
        return
    optlen = (data[off] & 0x3F) * 4
    ptype = _u16(data, off + 2)[0]
    inner = off + 8 + optlen
    t = _push_tunnel(fr, "geneve", inner, ptype == ETH_TEB)
    t.vni = _vni(data, off + 4)[0] >> 8
    t.protocol = ptype
    if ptype == ETH_TEB:
        _ethernet(fr, data, inner, vxlan_ports, depth + 1)
    elif ptype in (ETH_IPV4, ETH_IPV6):
        _raw_ip(fr, data, inner, vxlan_ports, depth + 1)
    else:
        fr.undecoded = f"Geneve protocol {ptype:#06x}"


def _gre(fr: Frame, data: bytes, off: int, vxlan_ports, depth: int) -> None:
    if len(data) < off + 4:
        fr.truncated, fr.undecoded = True, "GRE header cut short"
        return
    flags, ptype = struct.unpack_from("!HH", data, off)
    if flags & 0x7:
        fr.undecoded = f"GRE version {flags & 0x7}"
        return
    hlen = 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
    key = None
    if flags & 0x2000 and len(data) >= off + 8 + (4 if flags & 0x8000 else 0):
        key = struct.unpack_from("!I", data, off + 4 + (4 if flags & 0x8000 else 0))[0]
    inner = off + hlen
    if ptype == 0x88BE:  # ERSPAN type II: 8-byte header, then the mirrored Ethernet frame
        kind, inner = "erspan", inner + 8
    elif ptype == 0x22EB:  # ERSPAN type III: 12 bytes (+8 platform-specific if O bit)
        extra = 12
        if len(data) >= inner + 12 and data[inner + 11] & 0x01:
            extra += 8
        kind, inner = "erspan", inner + extra
    else:
        kind = "gre"
    if len(data) < inner:
        fr.truncated, fr.undecoded = True, "GRE header cut short"
        return
    t = _push_tunnel(fr, kind, inner, kind == "erspan" or ptype == ETH_TEB)
    t.protocol = ptype
    if kind == "erspan" and len(data) >= off + hlen + 4:
        t.vni = _u16(data, off + hlen + 2)[0] & 0x03FF  # the ERSPAN session id
    elif key is not None:
        t.vni = key
    if kind == "erspan" or ptype == ETH_TEB:
        _ethernet(fr, data, inner, vxlan_ports, depth + 1)
    elif ptype in (ETH_IPV4, ETH_IPV6):
        _raw_ip(fr, data, inner, vxlan_ports, depth + 1)
    else:
        fr.undecoded = f"GRE protocol {ptype:#06x}"


# ---- formatting (display only; cached because the same few addresses repeat) ----

@lru_cache(maxsize=4096)
def fmt_mac(b: bytes | None) -> str | None:
    return None if b is None else ":".join(f"{x:02x}" for x in b)


@lru_cache(maxsize=8192)
def fmt_ip(b: bytes | None) -> str | None:
    if b is None:
        return None
    if len(b) == 4:
        return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"
    import ipaddress
    return str(ipaddress.IPv6Address(b))


def tcp_flags_str(flags: int | None) -> str:
    if flags is None:
        return ""
    return "".join(letter for letter, bit in TCP_FLAG_LETTERS if flags & bit)
