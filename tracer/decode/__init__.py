"""Decoding: the bytes of one captured frame -> its layers, down to the innermost packet.

`decode(linktype, data)` gives a `Frame`. What callers use is exported here; the layers live in
the modules of this package, one per layer, each with the table it dispatches on:
  frame      Frame, TunnelHeader, decode() and LINK_TYPES {link type: decoder}
  link       Ethernet, VLAN tags, Linux cooked v1/v2, raw IP, BSD loopback, ARP;
             ETHERTYPES {ethertype: decoder} and the LINKTYPE_* numbers
  ip         IPv4, IPv6 and its extension headers; IP_PROTOCOLS {protocol: decoder}
  transport  TCP, UDP, ICMP
  tunnels    VXLAN, Geneve, GRE/ERSPAN, IP-in-IP; UDP_TUNNELS {port: decoder}
  text       addresses and TCP flags as text
"""

from tracer.decode.frame import LINK_TYPES, Frame, TunnelHeader, decode
from tracer.decode.ip import (
    IP_PROTOCOLS, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, PROTO_TCP, PROTO_UDP,
)
from tracer.decode.link import (
    ARP_REPLY, ARP_REQUEST, ETH_ARP, ETH_IPV4, ETH_IPV6, ETHERTYPES, LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2, LINKTYPE_NAMES, LINKTYPE_NULL, LINKTYPE_RAW, PROTO_ARP,
)
from tracer.decode.formatting import fmt_ip, fmt_mac, tcp_flags_str
from tracer.decode.tunnels import GENEVE_PORT, UDP_TUNNELS, VXLAN_PORTS

__all__ = [
    "ARP_REPLY", "ARP_REQUEST", "ETH_ARP", "ETH_IPV4", "ETH_IPV6", "ETHERTYPES", "GENEVE_PORT", "IP_PROTOCOLS", "LINK_TYPES",
    "LINKTYPE_ETHERNET", "LINKTYPE_IPV4", "LINKTYPE_IPV6", "LINKTYPE_LINUX_SLL", "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_NAMES", "LINKTYPE_NULL", "LINKTYPE_RAW", "PROTO_ARP", "PROTO_GRE", "PROTO_ICMP", "PROTO_ICMPV6", "PROTO_IPIP",
    "PROTO_IPV6", "PROTO_TCP", "PROTO_UDP", "UDP_TUNNELS", "VXLAN_PORTS", "Frame", "TunnelHeader", "decode",
    "fmt_ip", "fmt_mac", "tcp_flags_str",
]
