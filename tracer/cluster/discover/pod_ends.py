"""What every data path shares: each pod's end of the way (its eth0, its gateway, the host end of
its veth), the warnings that end's state gives, and the veth capture points the way starts and
ends with (the exercise's steps 3.1-3.4)."""

from __future__ import annotations

from typing import Any

from tracer.cluster.discover.readers import NodeState, PodReads
from tracer.model import PodEnd, WayPoint


def pod_end(reads: PodReads, node: NodeState) -> PodEnd:
    pod, toward = reads.pod, reads.toward
    f = reads.parse()
    gateway, dev = f["gateway"], f["dev"]
    route = reads.route() or (
        f"{toward} via {gateway} dev {dev} src {pod.ip}" if gateway else f"{toward} dev {dev} src {pod.ip}"
    )
    veth = node.link(ifindex=f["iflink"])
    name = veth["ifname"]
    proxy_arp, proxy_delay = node.veth_sysctls(name)
    return PodEnd(
        pod=pod, mac=f["mac"], mtu=f["mtu"], iflink=f["iflink"], route=route, gateway=gateway,
        gateway_mac=f["arp"].get(gateway) if gateway else None,
        host_veth=name, host_veth_mac=veth["address"], host_veth_ifindex=veth["ifindex"],
        proxy_arp=proxy_arp, proxy_delay=proxy_delay,
        node_route=node.route_for(pod.ip),
    )


def end_warnings(end: PodEnd, node: NodeState) -> list[str]:
    w = []
    where = f"{node.name}/{end.host_veth}"
    if end.proxy_arp != 1:
        w.append(f"proxy_arp is {end.proxy_arp} on {where}: nobody answers ARP for {end.gateway}")
    if end.gateway_mac and end.gateway_mac != end.host_veth_mac:
        w.append(f"pod {end.pod.name} holds {end.gateway_mac} for {end.gateway}, not {where}'s MAC {end.host_veth_mac}")
    if not any(r["dst"] == "default" for r in node.routes):
        w.append(f"node {node.name} has no default route: proxy-ARP will not answer for {end.gateway}")
    if f"dev {end.host_veth}" not in end.node_route:
        w.append(f"node {node.name} routes {end.pod.ip} as `{end.node_route}`, not via {end.host_veth}")
    return w


def veth_point(end: PodEnd, node: NodeState, direction: str) -> WayPoint:
    pod, veth = end.pod, end.host_veth
    if direction == "ingress":
        explanation = (
            f"{pod.name} routes via {end.gateway} dev eth0 (3.1); proxy-ARP on {veth}, the peer of "
            f"eth0@if{end.iflink} (3.2), answered with {end.host_veth_mac} (3.3/3.4), so the frame "
            f"enters {node.name} here, as the pod sent it."
        )
        eth = (end.mac, end.host_veth_mac)
    else:
        explanation = (
            f"{node.name} routes `{end.node_route}` and hands the packet, TTL-1 and with a new "
            f"Ethernet header from {end.host_veth_mac} to eth0's {end.mac}, into pod {pod.name}."
        )
        eth = (end.host_veth_mac, end.mac)
    return capture_point(node, node.link(ifindex=end.host_veth_ifindex), "pod-veth", direction, eth, explanation)


def capture_point(node: NodeState, link: dict[str, Any], role: str, direction: str, eth: tuple[str, str],
                  explanation: str) -> WayPoint:
    """A capture point on `link` (an `ip -j link` entry) of `node`."""
    return WayPoint(
        node=node.name, interface=link["ifname"], role=role, mac=link["address"], ifindex=link["ifindex"],
        direction=direction, eth_src=eth[0], eth_dst=eth[1], explanation=explanation,
    )
