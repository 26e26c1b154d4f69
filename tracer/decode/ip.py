"""IP: IPv4, IPv6 with its extension headers, and the IP_PROTOCOLS table of what they carry.

Both are entries of `link.ETHERTYPES`, called as `decoder(frame, data, offset, udp_ports, depth)`.
They dispatch on the protocol number by `IP_PROTOCOLS` {protocol: decoder}; the tunnels carried
directly by IP (IP-in-IP, GRE) add themselves to it in `tunnels`, which imports this module.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tracer.decode.transport import icmp, tcp, udp

if TYPE_CHECKING:
    from tracer.decode.frame import Frame

PROTO_ICMP, PROTO_IPIP, PROTO_TCP, PROTO_UDP, PROTO_IPV6, PROTO_GRE, PROTO_ICMPV6 = 1, 4, 6, 17, 41, 47, 58
IPV6_EXT_HEADERS = frozenset({0, 43, 44, 60, 51})

_ipv4 = struct.Struct("!BBHHHBBH4s4s").unpack_from


def other_protocol(fr: Frame, data: bytes, off: int, l4_len: int, udp_ports, depth: int) -> None:
    """A protocol not in IP_PROTOCOLS (or a tunnel nested too deep): its bytes stay raw."""
    fr.payload_len = max(l4_len, 0)
    fr.undecoded = f"IP protocol {fr.proto}"


IP_PROTOCOLS = {PROTO_TCP: tcp, PROTO_UDP: udp, PROTO_ICMP: icmp, PROTO_ICMPV6: icmp}


def ipv4(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
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
    off += ihl
    fr.l4_offset = off
    IP_PROTOCOLS.get(proto, other_protocol)(fr, data, off, total - ihl, udp_ports, depth)


def ipv6(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
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
    fr.l4_offset = pos
    IP_PROTOCOLS.get(nxt, other_protocol)(fr, data, pos, remaining, udp_ports, depth)
