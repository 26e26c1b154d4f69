"""The text view of a Way (`tracer path`): the exercise's steps, then the capture points in order."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from tracer.model import ServiceRef, Way


def render_dns(dns: Way, svc: ServiceRef, out: Console) -> None:
    """Step 0 of a URL by name: the pod's resolver asks the cluster DNS Service, kube-proxy DNATs
    the query to the DNS pod, which may run on another node (its way, point by point)."""
    e, s, d = escape, dns.src, dns.dst
    out.print(f"[bold]First the name:[/] {e(s.pod.name)}'s resolver asks {svc.cluster_ip}:53 (Service "
              f"{e(svc.namespace)}/{e(svc.name)}, its resolv.conf's nameserver); kube-proxy on {e(s.pod.node)} DNATs "
              f"the query to pod {e(d.pod.name)} ({d.pod.ip}) on {e(d.pod.node)}, conntrack undoes it on the answer")
    out.print("  the query's way: " + " -> ".join(e(p.id) for p in dns.points) + "\n")


def render_way(way: Way, out: Console) -> None:
    """The way in the exercise's terms: steps 3.1-3.4 on the source node, step 4 on the other."""
    s, d = way.src, way.dst
    e = escape  # pod and node names come from the cluster: no markup of theirs reaches the terminal
    out.print(f"[bold]Way of a request {e(s.pod.name)} ({s.pod.ip}, {e(s.pod.node)}) -> "
              f"{e(d.pod.name)} ({d.pod.ip}, {e(d.pod.node)})[/]")
    if way.service is not None:
        v = way.service
        out.print(f"  addressed to Service {e(v.namespace)}/{e(v.name)} {v.cluster_ip}:{v.port}: kube-proxy on "
                  f"{e(s.pod.node)} DNATs it to its endpoint {d.pod.ip}:{v.target_port} as it comes in from the pod"
                  + (f" ({e(v.rule)})" if v.rule else "") + "; conntrack undoes it on the reply")
    out.print(f"\n[bold]Steps 3.1-3.4 on {e(s.pod.node)}[/] (pod {e(s.pod.name)})")
    out.print(f"  3.1 ip route get {d.pod.ip}: {e(s.route)}")
    sysctls = f" (proxy_arp={s.proxy_arp}, proxy_delay={s.proxy_delay})" if s.arp_by == "proxy-arp" else ""
    bridged = f", a port of the bridge {e(s.bridge)}" if s.bridge else ""
    out.print(f"  3.2 eth0@if{s.iflink}: the veth's other end is ifindex {s.host_veth_ifindex} on "
              f"{e(s.pod.node)}, {e(s.host_veth)}{bridged}{sysctls}")
    _arp_steps(way, out)
    if way.tunnel:
        t = way.tunnel
        out.print(f"      {e(s.pod.node)} routes {e(t.route)}; {_between(way)}")
        out.print(f"\n[bold]Step 4 on {e(d.pod.node)}[/] (pod {e(d.pod.name)})")
        if t.encapsulation == "unknown":
            out.print(f"      how the packet gets to {e(d.pod.node)} is not a way tracer knows; the points --point "
                      f"named are captured in full, and {e(d.pod.node)} routes {e(d.node_route)}")
        elif t.encapsulation == "none":
            out.print(f"      the packet arrives on {e(t.underlay_dst)} ({t.dst_node_ip}) as it left, only the MACs "
                      f"rewritten, and {e(d.pod.node)} routes {e(d.node_route)}")
        else:
            out.print(f"      the {_encap_name(t.encapsulation)} packet arrives on {e(t.underlay_dst)} "
                      f"({t.dst_node_ip}), is decapsulated on {e(t.device)}, and {e(d.pod.node)} routes "
                      f"{e(d.node_route)}")
    elif s.bridge and s.bridge == d.bridge:
        out.print(f"\n[bold]Both pods run on {e(s.pod.node)}[/], on the bridge {e(s.bridge)}: it switches the frame "
                  "from one veth to the other, no routing (the TTL stays).")
    else:
        out.print(f"\n[bold]Both pods run on {e(s.pod.node)}[/]: no tunnel, the way is the two veths only.")
    out.print(f"      {e(d.host_veth)} (ifindex {d.host_veth_ifindex}) is the peer of {e(d.pod.name)}'s "
              f"eth0@if{d.iflink}, MAC {d.mac}")
    if way.data_path and way.data_path != "unknown":
        out.print(f"      (the way of {e(way.data_path)})")

    out.print("\n[bold]Capture points of the request[/] (the reply takes the mirror way)")
    for i, p in enumerate(way.points, 1):
        out.print(f"  [bold]{i}[/] {e(p.id):<26} {p.role:<9} {p.direction:<8} MAC {p.mac}   "
                  f"frame {p.eth_src} -> {p.eth_dst}")
        out.print(f"      {e(p.explanation)}")
        if p.bypass:
            out.print(f"      [yellow]may be bypassed:[/] {e(p.bypass)} A packet not seen here is not visible "
                      "here, not lost.")
    for w in way.warnings:
        out.print(f"[yellow]warning:[/] {e(w)}")


def _encap_name(kind: str) -> str:
    return {"vxlan": "VXLAN", "geneve": "Geneve", "ipip": "IP-in-IP"}.get(kind, kind)


def _between(way: Way) -> str:
    """The source node's tables that take the packet to the other node, in the data path's terms."""
    t = way.tunnel
    assert t is not None
    if t.encapsulation == "unknown":
        return f"out of {escape(t.device)}, a way tracer does not know"
    if t.encapsulation == "none":
        return f"no tunnel: the next hop {t.dst_node_ip} is {escape(way.dst.pod.node)}'s {escape(t.underlay_dst)}"
    if t.encapsulation == "ipip":
        return f"{escape(t.device)} adds an outer IPv4 header to {t.dst_node_ip} (IP protocol 4, +20 bytes)"
    if t.collect_metadata:
        return (f"{escape(t.device)} is collect-metadata (no FDB): the route or eBPF sets the tunnel key, destination "
                f"{t.dst_node_ip}, UDP {t.udp_port}, the VNI the sending pod's security identity")
    return (f"neighbour {t.dst_tunnel_ip} lladdr {t.dst_mac}; fdb {t.dst_mac} dst {t.dst_node_ip} "
            f"(VNI {t.vni}, UDP {t.udp_port})")


def _arp_steps(way: Way, out: Console) -> None:
    """Steps 3.3 and 3.4: who answers the pod's ARP for its gateway, and what that makes the next hop."""
    s, e = way.src, escape
    where = f"{e(s.pod.node)}/{e(s.host_veth)}"
    if s.arp_by == "proxy-arp" and s.proxy_arp is not None and s.proxy_arp != 1:
        # (no answer to the pod's who-has: the request never leaves the pod, whatever else is right)
        held = f" (the pod still holds {s.gateway_mac} from before)" if s.gateway_mac else ""
        out.print(f"  3.3 ARP: nobody answers the pod's who-has {s.gateway}: proxy_arp is {s.proxy_arp} on "
                  f"{where}{held}; the pod's own eth0 MAC is {s.mac}")
        out.print(f"  3.4 {s.host_veth_mac} is {e(s.host_veth)}'s MAC, but with proxy_arp {s.proxy_arp} it does not "
                  f"answer for {s.gateway}: the request does not leave the pod (on {e(s.pod.node)}: "
                  f"sysctl -w net.ipv4.conf.{e(s.host_veth)}.proxy_arp=1)")
        return
    arp = f"{s.gateway} at {s.gateway_mac}" if s.gateway_mac else f"{s.gateway} not resolved yet"
    out.print(f"  3.3 ARP: {arp}; the pod's own eth0 MAC is {s.mac}")
    if s.arp_by == "bridge":
        out.print(f"  3.4 {s.bridge_mac} is the bridge {e(s.bridge)}'s MAC: it owns {s.gateway}, the pods' gateway, "
                  "and takes the frame in for the node to route")
    elif s.arp_by == "node":
        out.print(f"  3.4 {s.host_veth_mac} is {e(s.host_veth)}'s MAC: {s.gateway} is {e(s.pod.node)}'s own address "
                  "(Cilium's router IP), answered on the veth the ARP came in by (by Cilium's eBPF ARP responder on "
                  "a real node)")
    else:
        out.print(f"  3.4 {s.host_veth_mac} is {e(s.host_veth)}'s MAC: proxy-ARP makes the host end of the "
                  "veth pair the next hop")
