"""Link layers: Ethernet with VLAN tags, Linux cooked (SLL, SLL2), raw IP, BSD loopback, ARP.

Every link decoder is called as `decoder(frame, data, offset, udp_ports, depth)`, like the
layers below it, so that `frame.LINK_TYPES` and the tunnels (whose inner frames are Ethernet
or raw IP) call the same functions. What follows an ethertype is dispatched by `ETHERTYPES`.
The link-type numbers are defined here, not in the capture readers, because decoding must not
import capture (capture imports decode).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tracer.decode.ip import ipv4, ipv6

if TYPE_CHECKING:
    from tracer.decode.frame import Frame

# Link types (https://www.tcpdump.org/linktypes.html) tracer decodes.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_NAMES = {
    LINKTYPE_NULL: "BSD loopback",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_LINUX_SLL: "Linux cooked v1",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2",
}

ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
PROTO_ARP = ETH_ARP
"""The protocol number tracer files ARP packets under beside IP's (its ethertype: every IP
protocol number is below 256, so none is taken)."""
ARP_REQUEST, ARP_REPLY = 1, 2
ETH_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
ETH_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows

# SLL packet types (direction as the capturing host saw it)
SLL_PKTTYPES = {0: "in", 1: "in", 2: "in", 3: "other", 4: "out"}

_u16 = struct.Struct("!H").unpack_from


def ethernet(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    if len(data) < off + 14:
        fr.truncated, fr.undecoded = True, "Ethernet header cut short"
        if len(data) >= off + 12:
            fr.eth_dst, fr.eth_src = data[off:off + 6], data[off + 6:off + 12]
        return
    fr.eth_dst = data[off:off + 6]
    fr.eth_src = data[off + 6:off + 12]
    ethertype(fr, data, off + 14, _u16(data, off + 12)[0], udp_ports, depth)


def linux_sll(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    if len(data) < off + 16:
        fr.truncated, fr.undecoded = True, "Linux cooked header cut short"
        return
    pkttype, hatype, alen = struct.unpack_from("!HHH", data, off)
    fr.sll_dir = SLL_PKTTYPES.get(pkttype)
    if hatype == 1 and alen == 6:
        fr.eth_src = data[off + 6:off + 12]
    ethertype(fr, data, off + 16, _u16(data, off + 14)[0], udp_ports, depth)


def linux_sll2(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    if len(data) < off + 20:
        fr.truncated, fr.undecoded = True, "Linux cooked v2 header cut short"
        return
    proto, _, fr.ifindex, hatype, pkttype, alen = struct.unpack_from("!HHIHBB", data, off)
    fr.sll_dir = SLL_PKTTYPES.get(pkttype)
    if hatype == 1 and alen == 6:
        fr.eth_src = data[off + 12:off + 18]
    ethertype(fr, data, off + 20, proto, udp_ports, depth)


def raw_ip(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    """IPv4 or IPv6, told apart by the version nibble."""
    if off >= len(data):
        fr.truncated, fr.undecoded = True, "IP header cut short"
        return
    v = data[off] >> 4
    if v == 4:
        ipv4(fr, data, off, udp_ports, depth)
    elif v == 6:
        ipv6(fr, data, off, udp_ports, depth)
    else:
        fr.undecoded = f"IP version {v}"


def loopback(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    """BSD loopback (NULL): a 4-byte address family in the byte order of the capturing host."""
    if len(data) < off + 4:
        fr.truncated, fr.undecoded = True, "loopback header cut short"
        return
    family = struct.unpack_from("<I", data, off)[0]
    if family > 0xFFFF:
        family = struct.unpack_from(">I", data, off)[0]
    if family == 2:
        ipv4(fr, data, off + 4, udp_ports, depth)
    elif family in (10, 24, 28, 30):  # AF_INET6 of Linux, the BSDs and macOS
        ipv6(fr, data, off + 4, udp_ports, depth)
    else:
        fr.undecoded = f"loopback address family {family}"


def ethertype(fr: Frame, data: bytes, off: int, etype: int, udp_ports, depth: int) -> None:
    """Dispatch by ETHERTYPES; VLAN tags are tried only when the table has no entry, so that an
    untagged frame (nearly all) pays nothing for them."""
    decoder = ETHERTYPES.get(etype)
    if decoder is not None:
        fr.ethertype = etype
        decoder(fr, data, off, udp_ports, depth)
    elif etype in ETH_VLAN:
        vlan_tags(fr, data, off, etype, udp_ports, depth)
    else:
        fr.ethertype = etype
        fr.undecoded = "IEEE 802.3 frame (LLC)" if etype <= 1500 else f"ethertype {etype:#06x}"


def vlan_tags(fr: Frame, data: bytes, off: int, etype: int, udp_ports, depth: int) -> None:
    """802.1Q/802.1ad tags, all of them into `Frame.vlans`, then what they carry."""
    vlans = []
    while etype in ETH_VLAN:
        if len(data) < off + 4:
            fr.truncated, fr.undecoded = True, "VLAN tag cut short"
            fr.vlans = tuple(vlans)
            return
        vlans.append(_u16(data, off)[0] & 0x0FFF)
        etype = _u16(data, off + 2)[0]
        off += 4
    fr.vlans = tuple(vlans)
    ethertype(fr, data, off, etype, udp_ports, depth)


def arp(fr: Frame, data: bytes, off: int, udp_ports, depth: int) -> None:
    if len(data) < off + 28:
        fr.truncated, fr.undecoded = True, "ARP cut short"
        return
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", data, off)
    if htype != 1 or ptype != ETH_IPV4 or hlen != 6 or plen != 4:
        fr.undecoded = "ARP for other than Ethernet/IPv4"
        return
    fr.arp = (op, data[off + 8:off + 14], data[off + 14:off + 18], data[off + 18:off + 24], data[off + 24:off + 28])


ETHERTYPES = {ETH_IPV4: ipv4, ETH_IPV6: ipv6, ETH_ARP: arp}
