"""Cilium's tunnel mode: VXLAN (UDP 8472) or Geneve (6081) on a collect-metadata device,
`cilium_vxlan` or `cilium_geneve`, with no FDB: where a packet goes is set per packet (by
Cilium's eBPF programs, or, in tracer's lab, by the route's lightweight tunnel encap), and its
VNI is the source's security identity, so none is assumed (facts: DATAPATHS.md §6).

Recognized from the source node's state: the route to the other pod goes out of such a device
(the lab's `... encap ip id N dst <node IP> ... dev cilium_vxlan`), or via `cilium_host` (a real
node, whose eBPF does the rest). The other node's underlay address comes from the route's
encap, else from the other node's own state (its default route's device): the destination
pod's node. A data-path module of tracer.cluster.discover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracer.cluster.discover.calico_vxlan import underlay_points
from tracer.cluster.discover.pod_ends import capture_point
from tracer.cluster.discover.readers import NodeState, Read
from tracer.errors import ClusterError
from tracer.model import NodeTunnel, PodEnd, PodRef, WayPoint

NAME = "Cilium tunnel (VXLAN or Geneve)"
DEVICE = "cilium_vxlan, cilium_geneve"
DEVICES = ("cilium_vxlan", "cilium_geneve")
KIND_PORTS = {"vxlan": 8472, "geneve": 6081}


def title(src_end: PodEnd) -> str:
    return "Cilium tunnel"


def bypass(src: NodeState, dst_pod: PodRef) -> str:
    """A real Cilium node (its route via cilium_host) may run BPF host routing: packets from the
    tunnel go into the pod by bpf_redirect_peer, past the host side of its lxc (DATAPATHS.md §6).
    The lab's Cilium routes in the kernel: every packet passes the lxc veths there."""
    if src.device_toward(dst_pod.ip)["ifname"] != "cilium_host":
        return ""
    return ("with BPF host routing, Cilium's eBPF hands packets from the tunnel straight to the pod's eth0 "
            "(bpf_redirect_peer), past the host side of its lxc veth, whose capture then sees only what the pod sends.")


def _collect_md(dev: dict[str, Any]) -> bool:
    info = dev.get("linkinfo", {})
    return info.get("info_kind") in KIND_PORTS and bool(info.get("info_data", {}).get("external"))


def reads_ahead(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    return (lambda: src.neighbours,)


def recognizes(src: NodeState, dst_pod: PodRef) -> bool:
    dev = src.device_toward(dst_pod.ip)
    return _collect_md(dev) or dev["ifname"] == "cilium_host"


def reads_after(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    return ()


def _tunnel_device(node: NodeState, toward: dict[str, Any]) -> dict[str, Any]:
    if _collect_md(toward):
        return toward
    dev = next((l for l in node.links if l["ifname"] in DEVICES and _collect_md(l)), None)
    if dev is None:
        raise ClusterError(f"node {node.name} routes via cilium_host but has no collect-metadata "
                           f"{' or '.join(DEVICES)} device", hint="is Cilium in tunnel mode (routingMode: tunnel)?")
    return dev


def _node_ip(node: NodeState) -> dict[str, Any]:
    """The node's underlay address: the one of the device its default route leaves by."""
    default = next((r for r in node.routes if r["dst"] == "default"), None)
    link = node.link(name=default["dev"]) if default else None
    addr = next((a for a in (link or {}).get("addr_info", []) if a.get("family") == "inet"), None)
    if addr is None:
        raise ClusterError(f"node {node.name} has no default route with an IPv4 address: its underlay address is unknown")
    return {"link": link, "ip": addr["local"]}


def between_nodes(src: NodeState, dst: NodeState, dst_pod: PodRef) -> tuple[NodeTunnel, Sequence[WayPoint]]:
    hop = src.route_get(dst_pod.ip)
    toward = src.device_toward(dst_pod.ip)
    dev = _tunnel_device(src, toward)
    info = dev["linkinfo"]
    kind = info["info_kind"]
    port = info.get("info_data", {}).get("port") or KIND_PORTS[kind]
    dst_ip = hop.get("encap_dst") or _node_ip(dst)["ip"]
    under_dst = dst.link_with_address(dst_ip)
    if under_dst is None:
        raise ClusterError(f"{src.name}'s route sends {dst_pod.ip} to {dst_ip}, which is not an address of {dst.name}, "
                           "the pod's node")
    under_src = src.link(name=src.route_get(dst_ip)["dev"])
    src_ip = next((a["local"] for a in under_src.get("addr_info", []) if a.get("family") == "inet"), "")
    dst_dev = next((l for l in dst.links if l["ifname"] == dev["ifname"]), None)
    if dst_dev is None:
        raise ClusterError(f"node {dst.name} has no {dev['ifname']}")
    gateway = hop.get("gateway") if _collect_md(toward) else None
    dst_mac = (src.neighbour(dev["ifname"], gateway) if gateway else None) or dst_dev["address"]
    t = NodeTunnel(device=dev["ifname"], vni=None, udp_port=port, mtu=dev["mtu"], src_mac=dev["address"],
                   dst_mac=dst_mac, dst_tunnel_ip=gateway or "", src_node_ip=src_ip, dst_node_ip=dst_ip,
                   route=src.route_for(dst_pod.ip), underlay_src=under_src["ifname"],
                   underlay_src_mac=under_src["address"], underlay_dst=under_dst["ifname"],
                   underlay_dst_mac=under_dst["address"], encapsulation=kind, collect_metadata=True)
    name = "VXLAN" if kind == "vxlan" else "Geneve"
    encap = (f"{name}, UDP to {port}, outer {src_ip} -> {dst_ip}, the VNI the sending pod's security identity "
             f"(none fixed)")
    how = (f"the route `{t.route}` sets the tunnel key" if _collect_md(toward)
           else "Cilium's eBPF program on the pod's lxc sets the tunnel key and redirects")
    return t, [
        capture_point(src, dev, "tunnel", "egress", (t.src_mac, t.dst_mac),
                      f"{src.name} sends it to {dev['ifname']}, a collect-metadata device with no FDB: {how} "
                      f"(destination {dst_ip}, {dst.name}, the pod's node)."),
        *underlay_points(t, src, dst, f"{dev['ifname']} wraps the frame ({encap}) and it leaves {src.name} on "
                         f"{t.underlay_src}.", f"The same encapsulated packet ({encap}) arrives on {dst.name}'s "
                         f"{t.underlay_dst}."),
        capture_point(dst, dst_dev, "tunnel", "ingress", (t.src_mac, t.dst_mac),
                      f"UDP port {port} belongs to {dst.name}'s {dev['ifname']}, which takes any VNI: the outer "
                      "headers are stripped and the inner frame appears here (a real node's eBPF may then redirect "
                      "it straight into the pod, past the host side of its lxc)."),
    ]
