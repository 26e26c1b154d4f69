"""Frame decoder: link layer -> tunnels -> the innermost IP packet and its L4 header.

One pass over the bytes with dispatch tables (link type, ethertype, IP protocol, UDP port ->
decoder), in the manner of dpkt, tuned for speed: addresses stay `bytes` (formatted only for
display), and a frame is decoded exactly once. What cannot be decoded further stays raw:
`Frame.undecoded` says why, `Frame.truncated` says the capture cut it. Decoding never raises on
any input.

Tunnels (VXLAN, Geneve, GRE incl. ERSPAN and transparent Ethernet bridging, IP-in-IP, IPv6-in-IP)
are peeled outermost first into `Frame.tunnels`; the fields of `Frame` itself are always those of
the innermost packet, which is the packet's identity across capture points.

This module holds the decoded view (`Frame`, `TunnelHeader`), the entry point `decode` and the
first table, `LINK_TYPES`; the layers and their tables are in `link`, `ip`, `transport` and
`tunnels`. Every decoder is called as `decoder(frame, data, offset, udp_ports, depth)` (IP
protocols also get the L4 length) and fills the frame in place.
"""

from __future__ import annotations

import struct

from tracer.decode.ip import PROTO_UDP
from tracer.decode.link import (
    LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL,
    LINKTYPE_RAW, ethernet, linux_sll, linux_sll2, loopback, raw_ip,
)
from tracer.decode.tunnels import DEFAULT_UDP_PORTS, VXLAN_PORTS, udp_port_table

LINK_TYPES = {
    LINKTYPE_ETHERNET: ethernet,
    LINKTYPE_LINUX_SLL: linux_sll,
    LINKTYPE_LINUX_SLL2: linux_sll2,
    LINKTYPE_RAW: raw_ip,
    LINKTYPE_IPV4: raw_ip,  # by the version nibble too: a packet of the other version is not misread
    LINKTYPE_IPV6: raw_ip,
    LINKTYPE_NULL: loopback,
}


class TunnelHeader:
    """One encapsulation layer: the outer headers that carry the next, inner frame.

    (Not the tunnel between two nodes that cluster discovery finds: this is one header in one frame.)
    """

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
        "undecoded", "truncated", "data", "fragments",
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
        self.tunnels: list[TunnelHeader] = []
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
        self.fragments: tuple[int, ...] | None = None
        """The lengths of the IPv4 fragments this frame was put together from (tracer.capture.defrag)."""

    def push_tunnel(self, kind: str, inner_off: int, inner_eth: bool) -> TunnelHeader:
        """A tunnel decoder found its header: what was decoded so far becomes the tunnel's outer part."""
        # Bytes the encapsulation adds on the wire: outer IP .. start of the inner IP packet, which
        # is the textbook 50 for VXLAN over IPv4, 20 for IP-in-IP, 24 for plain GRE.
        added = inner_off - self.ip_offset + (14 if inner_eth else 0)
        t = TunnelHeader(kind, self.eth_src, self.eth_dst, self.ip_src, self.ip_dst, self.ttl, added)
        if self.proto == PROTO_UDP:  # VXLAN, Geneve: keep the outer UDP ports
            t.udp_sport, t.udp_dport = self.sport, self.dport
        self.tunnels.append(t)
        self._reset_inner()
        return t

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



# The VXLAN ports of the last call and their UDP port table. A run uses one set, so a frame costs
# one `is`; the cache of udp_port_table, a dict, would compare an equal but other frozenset (as
# the CLI's) with its key on every frame.
_last_ports = (VXLAN_PORTS, DEFAULT_UDP_PORTS)


def _port_table(vxlan_ports) -> dict:
    global _last_ports
    table = udp_port_table(vxlan_ports)
    if isinstance(vxlan_ports, frozenset):  # a set could change while it is remembered
        _last_ports = (vxlan_ports, table)
    return table


def decode(linktype: int, data: bytes, orig_len: int | None = None,
           vxlan_ports: frozenset[int] = VXLAN_PORTS) -> Frame:
    """Decode one frame. Never raises: bad or short bytes end decoding with a reason."""
    fr = Frame(linktype, len(data), len(data) if orig_len is None else orig_len)
    fr.data = data
    last = _last_ports
    udp_ports = last[1] if last[0] is vxlan_ports else _port_table(vxlan_ports)
    link = LINK_TYPES.get(linktype)
    if link is None:
        fr.undecoded = f"link type {linktype} not supported"
        return fr
    try:
        link(fr, data, 0, udp_ports, 0)
    except (struct.error, IndexError, ValueError):  # a bound check missed: treat as cut short
        fr.truncated = True
        fr.undecoded = fr.undecoded or "malformed header"
    return fr
