"""Transport headers: TCP, UDP (and the tunnels it carries), ICMP and ICMPv6.

Each decoder is an entry of `ip.IP_PROTOCOLS`, called as
`decoder(frame, data, offset of the L4 header, L4 length per the IP header, udp_ports, depth)`.
`udp_ports` maps a UDP port to a tunnel decoder (`tunnels.udp_port_table`); it is passed down,
not imported, so that this module does not depend on the tunnels that depend on it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracer.decode.frame import Frame

_tcp = struct.Struct("!HHIIBB").unpack_from
_udp = struct.Struct("!HHH").unpack_from


def tcp(fr: Frame, data: bytes, off: int, l4_len: int, udp_ports, depth: int) -> None:
    n = len(data)
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


def udp(fr: Frame, data: bytes, off: int, l4_len: int, udp_ports, depth: int) -> None:
    n = len(data)
    if n < off + 8:
        fr.truncated, fr.undecoded = True, "UDP header cut short"
        if n >= off + 4:
            fr.sport, fr.dport = struct.unpack_from("!HH", data, off)
        return
    sport, dport, ulen = _udp(data, off)
    fr.sport, fr.dport = sport, dport
    fr.payload_len = max((ulen or l4_len) - 8, 0)
    fr.payload_offset = off + 8
    # The destination port decides first: a reply from a VXLAN port to Geneve is Geneve.
    tunnel = udp_ports.get(dport) or udp_ports.get(sport)
    if tunnel is not None:
        tunnel(fr, data, off + 8, udp_ports, depth)


def icmp(fr: Frame, data: bytes, off: int, l4_len: int, udp_ports, depth: int) -> None:
    """ICMP and ICMPv6 alike: type, code, and id/sequence of echo requests and replies."""
    n = len(data)
    fr.payload_len = max(l4_len - 8, 0)
    if n < off + 4:
        fr.truncated, fr.undecoded = True, "ICMP header cut short"
        return
    fr.icmp_type, fr.icmp_code = data[off], data[off + 1]
    if n >= off + 8 and fr.icmp_type in (0, 8, 128, 129):
        fr.icmp_id, fr.icmp_seq = struct.unpack_from("!HH", data, off + 4)
    fr.payload_offset = off + 8
