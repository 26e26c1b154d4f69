"""The kernel (BPF) filters `tracer follow` gives its capture agents: per point of the way, just
this flow's packets.

The underlay filter is the encapsulation's, not the CNI's, chosen by the way's `NodeTunnel`:
VXLAN on the tunnel's own port (4789 Calico, 8472 Flannel and Cilium) with the inner headers
at fixed offsets, Geneve (6081) with them after its variable options, IP-in-IP as IP protocol 4
with the inner header after the outer one, and with no encapsulation the flow's own packets.
The VNI is never part of a filter (Cilium's is the source's identity).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tracer.cluster.agents import CaptureSpec
from tracer.model import Way, WayPoint


def _bpf_hex(ip: str) -> str:
    """An IPv4 address as the 32-bit hex a BPF `udp[42:4]=` comparison takes (network order)."""
    return f"0x{int(ipaddress.IPv4Address(ip)):08X}"


def flow_filter(src_ip: str, dst_ip: str, port: int) -> str:
    """On pod veths, bridges and tunnel devices: the flow's own packets, both directions."""
    return f"host {src_ip} and host {dst_ip} and tcp port {port}"


def underlay_filter(way: Way, port: int, inner: int = 6) -> str:
    """On underlay NICs: this flow's packets (TCP, or `inner`: 17, UDP), inside the tunnel
    between the two nodes."""
    t = way.tunnel
    assert t is not None
    a, b = _bpf_hex(way.src.pod.ip), _bpf_hex(way.dst.pod.ip)
    if t.encapsulation == "none":
        return f"host {way.src.pod.ip} and host {way.dst.pod.ip} and {'udp' if inner == 17 else 'tcp'} port {port}"
    nodes = f"host {t.src_node_ip} and host {t.dst_node_ip}"
    # (a tunnel packet larger than the underlay's MTU goes in fragments, DF not set: libpcap's
    # `udp port` and `udp[...]` see only the first; the others, by the nodes, for the reader to
    # put together: tracer.capture.defrag)
    later = f" or (ip[6:2] & 0x1fff != 0 and {nodes})"
    return f"({_encapsulated(t, nodes, a, b, port, inner)}){later}"


def _encapsulated(t, nodes: str, a: str, b: str, port: int, inner: int) -> str:
    """The underlay filter of a tunnel: its packets carrying the flow (see underlay_filter)."""
    if t.encapsulation == "ipip":
        # the inner IPv4 header right after the outer one (20 bytes: Linux sends no options)
        return f"ip proto 4 and {nodes} and {_inner_match('ip', 20, a, b, port, inner)}"
    if t.encapsulation == "geneve":
        # 8 bytes UDP, 8 of Geneve and its options (udp[8] & 0x3f words), 14 of inner Ethernet
        return (f"udp port {t.udp_port} and {nodes} and "
                f"{_inner_match('udp', '(30 + (udp[8] & 0x3f) * 4)', a, b, port, inner)}")
    # VXLAN: 8 bytes UDP, 8 VXLAN, 14 inner Ethernet: the inner IPv4 header at udp[30]
    return f"udp port {t.udp_port} and {nodes} and {_inner_match('udp', 30, a, b, port, inner)}"


DNS_PORT = 53


def dns_filter(src_ip: str, servers: tuple[str, ...]) -> str:
    """The source pod's DNS (UDP, and TCP after a truncated answer) with any of `servers` (the
    DNS Service's ClusterIP before kube-proxy's DNAT, its pod after)."""
    hosts = " or ".join(f"host {s}" for s in servers)
    return f"host {src_ip} and ({hosts}) and port {DNS_PORT}"


def dns_point_filter(point: WayPoint, dns: Way, cluster_ip: str) -> str:
    """A point of the DNS query's way: the query and its answer, by the Service's ClusterIP on
    the source pod's side, by the DNS pod's address after the DNAT (and inside the tunnel)."""
    t = dns.tunnel
    if point.role == "underlay" and t is not None and t.encapsulation not in ("none", "unknown"):
        return f"({underlay_filter(dns, DNS_PORT, inner=17)}) or ({underlay_filter(dns, DNS_PORT)})"
    return dns_filter(dns.src.pod.ip, (cluster_ip, dns.dst.pod.ip))


def _inner_match(proto: str, ip: int | str, a: str, b: str, port: int, inner: int = 6) -> str:
    """The inner IPv4 header at `proto[ip]` (a number or a BPF expression): between the two pods
    (either way), TCP (or `inner`: 17, UDP), the port at either end (no inner IP options, as
    Linux sends them)."""
    def at(k: int) -> str:
        return f"{proto}[{ip} + {k}" if isinstance(ip, str) else f"{proto}[{ip + k}"

    return (f"(({at(12)}:4]={a} and {at(16)}:4]={b}) or ({at(12)}:4]={b} and {at(16)}:4]={a}))"
            f" and {at(9)}]={inner} and ({at(20)}:2]={port} or {at(22)}:2]={port})")


def arp_filter(ip: str) -> str:
    """ARP asking for or answering about `ip`, or sent by it: a pod resolving its gateway
    (Calico: who-has 169.254.1.1, answered by proxy-ARP), the node resolving the pod."""
    return f"arp host {ip}"


EVERY_FRAME = ""
"""The filter of a point `--point` named on a way tracer does not know: no filter (what carries
the flow there, and how, is unknown; the correlator picks the flow's packets out)."""


def point_filter(point: WayPoint, way: Way, port: int) -> str:
    """A pod's veth (and a bridge) carries the pods' ARP too: step 3.3 of the way, shown as
    packets of it when the run makes the pod or its node resolve an address; and the ICMP errors
    the nodes send the pods."""
    if point.asked and way.tunnel is not None and way.tunnel.encapsulation == "unknown":
        return EVERY_FRAME
    if point.role == "underlay":
        return underlay_filter(way, port)
    flow = flow_filter(way.src.pod.ip, way.dst.pod.ip, port)
    svc = way.service
    if svc is not None:  # (before kube-proxy's DNAT, and in the reply after its un-DNAT: the ClusterIP)
        flow = f"({flow}) or ({flow_filter(way.src.pod.ip, svc.cluster_ip, svc.port)})"
    if point.role in ("pod-veth", "bridge"):
        return (f"({flow}) or {arp_filter(way.src.pod.ip)} or {arp_filter(way.dst.pod.ip)}"
                f" or {icmp_error_filter(way.src.pod.ip, way.dst.pod.ip)}")
    return flow


def icmp_error_filter(a: str, b: str) -> str:
    """ICMP destination-unreachable to or from either pod: a node's "fragmentation needed" to a
    pod whose packet the way's MTU does not take (path-MTU discovery), a refused port."""
    return f"(icmp[icmptype] == icmp-unreach and (host {a} or host {b}))"


def capture_plan(way: Way, port: int, dns: Way | Sequence[Way] | None = None, dns_ip: str = "",
                 others: Sequence[Way] = ()) -> dict[str, list[CaptureSpec]]:
    """Node -> its capture points on the way (each interface once), in the order of the way;
    with `others` (the ways to a Service's other endpoints) and `dns` (the way of the source
    pod's DNS query to the cluster DNS Service at `dns_ip`), their points too, each filter
    taking their packets as well where the ways share a point."""
    plan: dict[str, list[CaptureSpec]] = {}
    for p in way.points:
        specs = plan.setdefault(p.node, [])
        if all(s.interface != p.interface for s in specs):
            specs.append(CaptureSpec(interface=p.interface, bpf=point_filter(p, way, port)))
    extra_ways = [(w, p, point_filter(p, w, port)) for w in others for p in w.points]
    dns_ways = () if dns is None else (dns,) if isinstance(dns, Way) else tuple(dns)
    extra_ways += [(d, p, dns_point_filter(p, d, dns_ip)) for d in dns_ways for p in d.points]
    for _, p, extra in extra_ways:
        specs = plan.setdefault(p.node, [])
        k = next((k for k, s in enumerate(specs) if s.interface == p.interface), None)
        if k is None:
            specs.append(CaptureSpec(interface=p.interface, bpf=extra))
        elif specs[k].bpf and extra and extra not in specs[k].bpf:  # ("": every frame already)
            specs[k] = CaptureSpec(interface=p.interface, bpf=f"({specs[k].bpf}) or ({extra})")
        elif not extra:
            specs[k] = CaptureSpec(interface=p.interface, bpf="")
    return plan
