"""The kernel (BPF) filters `tracer follow` gives its capture agents: per point of the way, just
this flow's packets.

The underlay filter is the encapsulation's, not the CNI's: every VXLAN data path (Calico's,
Flannel's) puts the same outer headers on the wire, and every tunnel the way model knows is a
VXLAN one (`NodeTunnel`: VNI, UDP port). A data path with another encapsulation (IPIP) adds its
filter here, chosen by the tunnel's kind.
"""

from __future__ import annotations

import ipaddress

from tracer.cluster.agents import CaptureSpec
from tracer.model import Way, WayPoint


def _bpf_hex(ip: str) -> str:
    """An IPv4 address as the 32-bit hex a BPF `udp[42:4]=` comparison takes (network order)."""
    return f"0x{int(ipaddress.IPv4Address(ip)):08X}"


def flow_filter(src_ip: str, dst_ip: str, port: int) -> str:
    """On pod veths, bridges and tunnel devices: the flow's own packets, both directions."""
    return f"host {src_ip} and host {dst_ip} and tcp port {port}"


def underlay_filter(way: Way, port: int) -> str:
    """On underlay NICs: this flow's packets inside the VXLAN between the two nodes.

    After the 8-byte UDP, 8-byte VXLAN and 14-byte inner Ethernet headers, the inner IPv4 header
    starts at udp[30]: protocol at udp[39], source at udp[42:4], destination at udp[46:4], and
    (without IP options, as Linux sends TCP) the TCP ports at udp[50:2] and udp[52:2].
    """
    t = way.tunnel
    assert t is not None
    a, b = _bpf_hex(way.src.pod.ip), _bpf_hex(way.dst.pod.ip)
    return (f"udp port {t.udp_port} and host {t.src_node_ip} and host {t.dst_node_ip}"
            f" and ((udp[42:4]={a} and udp[46:4]={b}) or (udp[42:4]={b} and udp[46:4]={a}))"
            f" and udp[39]=6 and (udp[50:2]={port} or udp[52:2]={port})")


def arp_filter(ip: str) -> str:
    """ARP asking for or answering about `ip`, or sent by it: a pod resolving its gateway
    (Calico: who-has 169.254.1.1, answered by proxy-ARP), the node resolving the pod."""
    return f"arp host {ip}"


def point_filter(point: WayPoint, way: Way, port: int) -> str:
    """A pod's veth (and a bridge) carries the pods' ARP too: step 3.3 of the way, shown as
    packets of it when the run makes the pod or its node resolve an address."""
    if point.role == "underlay":
        return underlay_filter(way, port)
    flow = flow_filter(way.src.pod.ip, way.dst.pod.ip, port)
    if point.role in ("pod-veth", "bridge"):
        return f"({flow}) or {arp_filter(way.src.pod.ip)} or {arp_filter(way.dst.pod.ip)}"
    return flow


def capture_plan(way: Way, port: int) -> dict[str, list[CaptureSpec]]:
    """Node -> its capture points on the way (each interface once), in the order of the way."""
    plan: dict[str, list[CaptureSpec]] = {}
    for p in way.points:
        specs = plan.setdefault(p.node, [])
        if all(s.interface != p.interface for s in specs):
            specs.append(CaptureSpec(interface=p.interface, bpf=point_filter(p, way, port)))
    return plan
