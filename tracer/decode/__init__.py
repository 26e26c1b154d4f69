"""Decoding: the bytes of one captured frame -> its layers, down to the innermost packet.

`decode(linktype, data)` gives a `Frame`. What callers use is exported here; the layers live in
the modules of this package.
"""

from tracer.decode.frame import (
    ETH_ARP, ETH_IPV4, ETH_IPV6, GENEVE_PORT, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, PROTO_TCP,
    PROTO_UDP, VXLAN_PORTS, Frame, Tunnel, decode, fmt_ip, fmt_mac, tcp_flags_str,
)

__all__ = [
    "ETH_ARP", "ETH_IPV4", "ETH_IPV6", "GENEVE_PORT", "PROTO_GRE", "PROTO_ICMP", "PROTO_ICMPV6", "PROTO_IPIP",
    "PROTO_IPV6", "PROTO_TCP", "PROTO_UDP", "VXLAN_PORTS", "Frame", "Tunnel", "decode", "fmt_ip", "fmt_mac",
    "tcp_flags_str",
]
