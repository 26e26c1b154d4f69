"""What every data path shares: each pod's end of the way (its eth0, its gateway, the host end of
its veth and, where there is one, the bridge that veth is a port of), the warnings that end's
state gives, and the capture points the way starts and ends with (the exercise's steps 3.1-3.4),
in the terms of who answers the pod's ARP for its gateway:

- proxy-ARP on the host veth (Calico: 169.254.1.1, answered with ee:ee:ee:ee:ee:ee);
- a bridge that owns the gateway address (Flannel's cni0 with the lease's .1): the bridge is a
  point of the way, and the pod's frames go to the bridge's MAC;
- the node's own address (Cilium's router IP on cilium_host): the kernel, or Cilium's eBPF ARP
  responder, answers with the host veth's MAC.
"""

from __future__ import annotations

from typing import Any

from tracer.cluster.discover.readers import NodeState, PodReads
from tracer.errors import ClusterError
from tracer.model import PodEnd, WayPoint


def pod_end(reads: PodReads, node: NodeState) -> PodEnd:
    pod, toward = reads.pod, reads.toward
    try:
        f = reads.parse()
    except ClusterError as e:
        f = from_node_side(reads, node)  # (a distroless pod: no `cat`; what the node knows of it)
        if f is None:
            raise e from None
    gateway, dev = f["gateway"], f["dev"]
    route = reads.route() or (
        f"{toward} via {gateway} dev {dev} src {pod.ip}" if gateway else
        f"{toward}: not read (the pod has neither cat nor ip)" if reads.from_node else f"{toward} dev {dev} src {pod.ip}"
    )
    veth = node.link(ifindex=f["iflink"])
    name = veth["ifname"]
    bridge = node.link(name=veth["master"]) if veth.get("master") else None
    proxy_arp, proxy_delay = node.veth_sysctls(name)
    if reads.from_node and gateway is None:
        gateway = _inferred_gateway(node, veth, bridge, proxy_arp)
    if bridge is not None and gateway and any(a.get("local") == gateway for a in bridge.get("addr_info", [])):
        arp_by = "bridge"
    elif gateway and node.link_with_address(gateway) is not None:
        arp_by = "node"
    else:
        arp_by = "proxy-arp"
    return PodEnd(
        pod=pod, mac=f["mac"], mtu=f["mtu"], iflink=f["iflink"], route=route, gateway=gateway,
        gateway_mac=f["arp"].get(gateway) if gateway else None,
        host_veth=name, host_veth_mac=veth["address"], host_veth_ifindex=veth["ifindex"],
        proxy_arp=proxy_arp, proxy_delay=proxy_delay,
        node_route=node.route_for(pod.ip),
        bridge=bridge["ifname"] if bridge else None, bridge_mac=bridge["address"] if bridge else None, arp_by=arp_by,
    )


def from_node_side(reads: PodReads, node: NodeState) -> dict[str, Any] | None:
    """What `PodReads.parse` gives, for a pod that cannot be read inside (a distroless image: no
    `cat`), from its node: the node's route to the pod names its host veth (Calico, Cilium: a /32
    route `dev <veth>`; a bridge: the bridge's FDB entry of the pod's MAC names the port), the
    veth's ifindex is eth0's iflink, the node's neighbour entry the pod's MAC. The pod's own
    route and ARP table are not known: its gateway stays unknown. None where the node does not
    tell either (no route, no neighbour entry on a bridge)."""
    pod = reads.pod
    try:
        dev = node.route_get(pod.ip)["dev"]
        link = node.link(name=dev)
    except (ClusterError, KeyError, IndexError):
        return None
    mac = node.neighbour(dev, pod.ip) or ""
    if link.get("linkinfo", {}).get("info_kind") == "bridge":  # (Flannel's cni0: the port from the FDB)
        port = next((e.get("ifname") for e in node.fdb if e.get("mac") == mac and e.get("master") == dev), None) if mac else None
        if port is None:
            return None
        link = node.link(name=port)
    reads.from_node = True
    return {"iflink": link["ifindex"], "mac": mac, "mtu": link.get("mtu", 0), "gateway": None, "dev": "eth0", "arp": {}}


CALICO_GATEWAY = "169.254.1.1"
"""The gateway Calico's CNI plugin gives every pod (answered by proxy-ARP, DATAPATHS.md §1)."""


def _inferred_gateway(node: NodeState, veth: dict[str, Any], bridge: dict[str, Any] | None, proxy_arp: int) -> str | None:
    """A pod's gateway, where it could not be read inside, as its CNI sets it: a bridge's own
    address (Flannel's cni0, isGateway), Calico's 169.254.1.1 behind a proxy-ARP veth with its
    MAC, the node's router address on cilium_host (Cilium); else unknown."""
    def inet(link: dict[str, Any]) -> str | None:
        return next((a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"), None)

    if bridge is not None:
        return inet(bridge)
    if proxy_arp == 1 and veth.get("address") == "ee:ee:ee:ee:ee:ee":
        return CALICO_GATEWAY
    host = next((link for link in node.links if link.get("ifname") == "cilium_host"), None)
    return inet(host) if host is not None else None


def end_warnings(end: PodEnd, node: NodeState) -> list[str]:
    w = []
    where = f"{node.name}/{end.host_veth}"
    if end.arp_by == "proxy-arp" and end.gateway:
        if end.proxy_arp != 1:
            w.append(f"proxy_arp is {end.proxy_arp} on {where}: nobody answers ARP for {end.gateway}")
        if not any(r["dst"] == "default" for r in node.routes):
            w.append(f"node {node.name} has no default route: proxy-ARP will not answer for {end.gateway}")
    expected = end.gateway_hop_mac
    if end.gateway_mac and end.gateway_mac != expected:
        owner = f"{node.name}/{end.bridge}" if end.bridge else where
        w.append(f"pod {end.pod.name} holds {end.gateway_mac} for {end.gateway}, not {owner}'s MAC {expected}")
    via = end.bridge or end.host_veth
    if f"dev {via}" not in end.node_route:
        w.append(f"node {node.name} routes {end.pod.ip} as `{end.node_route}`, not via {via}")
    return w


def end_points(end: PodEnd, node: NodeState, direction: str, *, routed: bool = True) -> list[WayPoint]:
    """The points of a pod's end of the way: its host veth and, if it is a bridge port, the
    bridge (after the veth on the way in, before it on the way out). `routed` False: the other
    pod is on the same bridge, which switches between them (no bridge point: a frame switched
    from port to port never passes the bridge's own interface)."""
    veth = node.link(ifindex=end.host_veth_ifindex)
    if end.bridge is None or not routed:
        return [_veth_point(end, node, veth, direction, routed)]
    bridge = node.link(name=end.bridge)
    pod, gw = end.pod, end.gateway
    if direction == "ingress":
        return [
            capture_point(node, veth, "pod-veth", "ingress", (end.mac, end.bridge_mac),
                          f"{pod.name} routes via {gw} dev eth0 (3.1); {gw} is {end.bridge}'s own address, so "
                          f"{end.bridge} answers its ARP with {end.bridge_mac} (3.3); the frame leaves eth0@if"
                          f"{end.iflink} and enters {node.name} on its peer {veth['ifname']} (3.2), a port of "
                          f"{end.bridge}, as the pod sent it."),
            capture_point(node, bridge, "bridge", "ingress", (end.mac, end.bridge_mac),
                          f"The frame is for {end.bridge}'s own MAC: the bridge hands it up to {node.name}, which "
                          "routes it from here (the same frame, unchanged)."),
        ]
    return [
        capture_point(node, bridge, "bridge", "egress", (end.bridge_mac, end.mac),
                      f"{node.name} routes `{end.node_route}`: TTL-1, and the Ethernet header becomes "
                      f"{end.bridge_mac} -> {end.mac} ({pod.name}'s eth0, from {end.bridge}'s neighbour table)."),
        capture_point(node, veth, "pod-veth", "egress", (end.bridge_mac, end.mac),
                      f"{end.bridge} switches the frame out of its port {veth['ifname']} into pod {pod.name}, "
                      "unchanged."),
    ]


def _veth_point(end: PodEnd, node: NodeState, veth: dict[str, Any], direction: str, routed: bool) -> WayPoint:
    pod, name = end.pod, end.host_veth
    if direction == "ingress":
        if end.arp_by == "bridge":  # (the other pod on the same bridge: it resolves that pod itself)
            explanation = (f"{pod.name} and the other pod share {end.bridge}'s subnet: it resolves the other pod's "
                           f"MAC itself and the frame enters {end.bridge} on {name}, the peer of eth0@if{end.iflink}.")
            eth = (end.mac, "")
        elif end.arp_by == "node":
            explanation = (f"{pod.name} routes via {end.gateway} dev eth0 (3.1); {end.gateway} is {node.name}'s own "
                           f"address, so the kernel answers its ARP with {name}'s MAC {end.host_veth_mac} (as "
                           f"Cilium's eBPF ARP responder does, 3.3); the frame enters {node.name} on {name}, the peer "
                           f"of eth0@if{end.iflink} (3.2), as the pod sent it.")
            eth = (end.mac, end.host_veth_mac)
        else:
            explanation = (f"{pod.name} routes via {end.gateway} dev eth0 (3.1); proxy-ARP on {name}, the peer of "
                           f"eth0@if{end.iflink} (3.2), answered with {end.host_veth_mac} (3.3/3.4), so the frame "
                           f"enters {node.name} here, as the pod sent it.")
            eth = (end.mac, end.host_veth_mac)
    elif not routed:
        explanation = f"{end.bridge} switches the frame out of its port {name} into pod {pod.name}, unchanged."
        eth = ("", end.mac)
    else:
        explanation = (f"{node.name} routes `{end.node_route}` and hands the packet, TTL-1 and with a new "
                       f"Ethernet header from {end.host_veth_mac} to eth0's {end.mac}, into pod {pod.name}.")
        eth = (end.host_veth_mac, end.mac)
    return capture_point(node, veth, "pod-veth", direction, eth, explanation)


def capture_point(node: NodeState, link: dict[str, Any], role: str, direction: str, eth: tuple[str, str],
                  explanation: str) -> WayPoint:
    """A capture point on `link` (an `ip -j link` entry) of `node`."""
    return WayPoint(
        node=node.name, interface=link["ifname"], role=role, mac=link["address"], ifindex=link["ifindex"],
        direction=direction, eth_src=eth[0], eth_dst=eth[1], explanation=explanation,
    )
