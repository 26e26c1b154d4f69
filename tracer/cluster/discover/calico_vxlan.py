"""The Calico VXLAN data path: the way between two nodes through vxlan.calico (the exercise's
step 4).

The source node routes the other pod's block via the other node's tunnel address on the vxlan
device (`... via 172.18.104.0 dev vxlan.calico onlink`); a permanent neighbour entry gives that
address the other tunnel device's MAC, and an FDB entry for that MAC names the other node's
underlay address, where the encapsulated frame goes. A data-path module of
tracer.cluster.discover (see `DataPath` there).
"""

from __future__ import annotations

from collections.abc import Sequence

from tracer.cluster.discover.pod_ends import capture_point
from tracer.cluster.discover.readers import NodeState, Read
from tracer.errors import ClusterError
from tracer.model import NodeTunnel, PodRef, WayPoint

NAME = "Calico VXLAN"
DEVICE = "vxlan.calico"


def reads_ahead(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    """The source node's tables this way is read from (with the first round of reads)."""
    return (lambda: src.neighbours, lambda: src.fdb)


def recognizes(src: NodeState, dst_pod: PodRef) -> bool:
    """The source node sends the other pod's packets out of a vxlan device."""
    return src.device_toward(dst_pod.ip).get("linkinfo", {}).get("info_kind") == "vxlan"


def reads_after(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    """The route to the node behind the tunnel, when the first round's tables name it
    (`between_nodes` checks everything and explains what is missing)."""
    def underlay_route() -> None:
        hop = src.route_get(dst_pod.ip)
        gateway = hop.get("gateway")
        mac = src.neighbour(hop["dev"], gateway) if gateway else None
        node_ip = src.fdb_dst(hop["dev"], mac) if mac else None
        if node_ip:
            src.route_get(node_ip)

    return (underlay_route,)


def between_nodes(src: NodeState, dst: NodeState, dst_pod: PodRef) -> tuple[NodeTunnel, Sequence[WayPoint]]:
    """The tunnel and its capture points in the order the request passes them."""
    tunnel = _tunnel(src, dst, dst_pod)
    return tunnel, _tunnel_points(tunnel, src, dst)


def _tunnel(src: NodeState, dst: NodeState, dst_pod: PodRef) -> NodeTunnel:
    hop = src.route_get(dst_pod.ip)
    dev = src.device_toward(dst_pod.ip)
    info = dev["linkinfo"]["info_data"]
    gateway = hop.get("gateway")
    if gateway is None:
        raise ClusterError(f"node {src.name} has no next hop for {dst_pod.ip} on {hop['dev']}")
    dst_mac = src.neighbour(hop["dev"], gateway)
    if dst_mac is None:
        raise ClusterError(f"node {src.name} has no neighbour entry for {gateway} on {hop['dev']}",
                           hint="Calico programs it statically; is calico-node running on both nodes?")
    dst_node_ip = src.fdb_dst(hop["dev"], dst_mac)
    if dst_node_ip is None:
        raise ClusterError(f"node {src.name} has no FDB entry for {dst_mac} on {hop['dev']}")
    under_src = src.link(name=src.route_get(dst_node_ip)["dev"])
    under_dst = dst.link_with_address(dst_node_ip)
    if under_dst is None:
        raise ClusterError(f"the FDB entry on {src.name} sends to {dst_node_ip}, but node {dst.name} has no such address")
    return NodeTunnel(
        device=hop["dev"], vni=info["id"], udp_port=info.get("port", 4789), mtu=dev["mtu"],
        src_mac=dev["address"], dst_mac=dst_mac, dst_tunnel_ip=gateway,
        src_node_ip=info.get("local", ""), dst_node_ip=dst_node_ip, route=src.route_for(dst_pod.ip),
        underlay_src=under_src["ifname"], underlay_src_mac=under_src["address"],
        underlay_dst=under_dst["ifname"], underlay_dst_mac=under_dst["address"],
    )


def _tunnel_points(t: NodeTunnel, src: NodeState, dst: NodeState) -> list[WayPoint]:
    dst_dev = next((l for l in dst.links if l["address"] == t.dst_mac), None)
    if dst_dev is None:
        raise ClusterError(f"node {dst.name} has no tunnel device with MAC {t.dst_mac}",
                           hint=f"the neighbour entry on {src.name} is stale")
    outer = (t.underlay_src_mac, t.underlay_dst_mac)
    inner = (t.src_mac, t.dst_mac)
    encap = f"VXLAN VNI {t.vni}, UDP to {t.udp_port}, outer {t.src_node_ip} -> {t.dst_node_ip}"
    return [
        capture_point(src, src.link(name=t.device), "tunnel", "egress", inner,
                      f"{src.name} routes `{t.route}`: TTL-1, and the Ethernet header becomes "
                      f"{t.src_mac} -> {t.dst_mac} ({dst.name}'s {t.device}, a permanent neighbour entry)."),
        capture_point(src, src.link(name=t.underlay_src), "underlay", "egress", outer,
                      f"The FDB entry for {t.dst_mac} says dst {t.dst_node_ip}: {t.device} wraps the frame "
                      f"({encap}, +50 bytes) and it leaves {src.name} on the underlay NIC."),
        capture_point(dst, dst.link(name=t.underlay_dst), "underlay", "ingress", outer,
                      f"Step 4: the same encapsulated packet ({encap}) arrives on {dst.name}'s underlay NIC."),
        capture_point(dst, dst_dev, "tunnel", "ingress", inner,
                      f"UDP port {t.udp_port} belongs to {dst_dev['ifname']}: the kernel strips the outer "
                      f"headers and the inner frame, unchanged since {src.name}'s {t.device}, appears here."),
    ]
