"""Tunnels: VXLAN and Geneve (over UDP), GRE with ERSPAN, IP-in-IP and IPv6-in-IP.

A tunnel decoder records the outer headers (`Frame.push_tunnel`) and decodes the inner frame
with the link and IP decoders, one level deeper. Adding a tunnel type is one decoder here and
one table entry: `UDP_TUNNELS` {port: decoder} for a UDP tunnel, `IP_PROTOCOLS` (at the end of
this module) for one carried directly by IP. The VXLAN ports are configurable, so the table
decoding looks up is `udp_port_table(vxlan_ports)`, built once per set of ports.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tracer.decode.ip import IP_PROTOCOLS, PROTO_GRE, PROTO_IPIP, PROTO_IPV6, ipv4, ipv6, other_protocol
from tracer.decode.link import ETH_IPV4, ETH_IPV6, ETH_TEB, ethernet, raw_ip

if TYPE_CHECKING:
    from tracer.decode.frame import Frame

VXLAN_PORTS = frozenset({4789, 8472})
GENEVE_PORT = 6081
MAX_TUNNEL_DEPTH = 8  # deeper nesting is left undecoded: bounds the work on crafted input

_u16 = struct.Struct("!H").unpack_from
_vni = struct.Struct("!I").unpack_from

# What Geneve and GRE carry, by their protocol type (an ethertype).
PAYLOADS = {ETH_TEB: ethernet, ETH_IPV4: raw_ip, ETH_IPV6: raw_ip}


def vxlan(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    if depth >= MAX_TUNNEL_DEPTH:
        return
    if len(data) < off + 8:
        fr.truncated, fr.undecoded = True, "VXLAN header cut short"
        return
    if not data[off] & 0x08:
        fr.undecoded = "UDP on a VXLAN port without the VXLAN I flag"
        return
    t = fr.push_tunnel("vxlan", off + 8, True)
    t.vni = _vni(data, off + 4)[0] >> 8
    ethernet(fr, data, off + 8, udp_ports, depth + 1)


def geneve(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    if depth >= MAX_TUNNEL_DEPTH:
        return
    if len(data) < off + 8:
        fr.truncated, fr.undecoded = True, "Geneve header cut short"
        return
    if data[off] >> 6 != 0:
        fr.undecoded = f"Geneve version {data[off] >> 6}"
        return
    optlen = (data[off] & 0x3F) * 4
    ptype = _u16(data, off + 2)[0]
    inner = off + 8 + optlen
    t = fr.push_tunnel("geneve", inner, ptype == ETH_TEB)
    t.vni = _vni(data, off + 4)[0] >> 8
    t.protocol = ptype
    payload = PAYLOADS.get(ptype)
    if payload is None:
        fr.undecoded = f"Geneve protocol {ptype:#06x}"
    else:
        payload(fr, data, inner, udp_ports, depth + 1)


def gre(fr: Frame, data: bytes, off: int, l4_len: int, udp_ports, depth: int) -> None:
    if depth >= MAX_TUNNEL_DEPTH:
        return other_protocol(fr, data, off, l4_len, udp_ports, depth)
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
    t = fr.push_tunnel(kind, inner, kind == "erspan" or ptype == ETH_TEB)
    t.protocol = ptype
    if kind == "erspan" and len(data) >= off + hlen + 4:
        t.vni = _u16(data, off + hlen + 2)[0] & 0x03FF  # the ERSPAN session id
    elif key is not None:
        t.vni = key
    payload = ethernet if kind == "erspan" else PAYLOADS.get(ptype)
    if payload is None:
        fr.undecoded = f"GRE protocol {ptype:#06x}"
    else:
        payload(fr, data, inner, udp_ports, depth + 1)


def ipip(fr: Frame, data: bytes, off: int, l4_len: int, udp_ports, depth: int) -> None:
    if depth >= MAX_TUNNEL_DEPTH:
        return other_protocol(fr, data, off, l4_len, udp_ports, depth)
    fr.push_tunnel("ipip", off, False)
    ipv4(fr, data, off, udp_ports, depth + 1)


def ipv6_in_ip(fr: Frame, data: bytes, off: int, l4_len: int, udp_ports, depth: int) -> None:
    if depth >= MAX_TUNNEL_DEPTH:
        return other_protocol(fr, data, off, l4_len, udp_ports, depth)
    fr.push_tunnel("ipip", off, False)
    ipv6(fr, data, off, udp_ports, depth + 1)


# UDP tunnels on fixed ports; the VXLAN ports come from `udp_port_table`'s argument.
UDP_TUNNELS = {GENEVE_PORT: geneve}

# {VXLAN ports: {UDP port: decoder}}: a frame's ports are looked up in one dict, by destination
# port and then by source port, instead of testing each tunnel's rule.
PORT_TABLES: dict[frozenset[int], dict] = {}


def udp_port_table(vxlan_ports) -> dict:
    """{UDP port: tunnel decoder}, cached per set of VXLAN ports.

    A configured VXLAN port overrides a fixed port (6081 given as a VXLAN port is VXLAN).
    Looked up by destination port first, this is today's rule: VXLAN if the destination port is
    a VXLAN port or the source port is one and the destination is not Geneve's; else Geneve if
    either port is Geneve's.
    """
    try:
        return PORT_TABLES[vxlan_ports]
    except KeyError:
        pass
    except TypeError:  # a set or a list: not hashable, so built every time, never cached
        return _build_port_table(vxlan_ports)
    if len(PORT_TABLES) >= 64:  # a run uses one or two sets; do not grow without bound
        PORT_TABLES.clear()
    table = PORT_TABLES[vxlan_ports] = _build_port_table(vxlan_ports)
    return table


def _build_port_table(vxlan_ports) -> dict:
    table = dict(UDP_TUNNELS)
    table.update(dict.fromkeys(vxlan_ports, vxlan))
    return table


DEFAULT_UDP_PORTS = udp_port_table(VXLAN_PORTS)  # built at import, not at the first frame

IP_PROTOCOLS.update({PROTO_IPIP: ipip, PROTO_IPV6: ipv6_in_ip, PROTO_GRE: gre})
