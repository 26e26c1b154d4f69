"""The Calico VXLAN data path: the way between two nodes through vxlan.calico (the exercise's
step 4).

The source node routes the other pod's block via the other node's tunnel address on the vxlan
device (`... via 172.18.104.0 dev vxlan.calico onlink`); a permanent neighbour entry gives that
address the other tunnel device's MAC, and an FDB entry for that MAC names the other node's
underlay address, where the encapsulated frame goes. Flannel's flannel.1 works the same way
(tracer.cluster.discover.flannel_vxlan reads it with `static_vxlan`). A data-path module of
tracer.cluster.discover (see `DataPath` there).
"""

from __future__ import annotations

from collections.abc import Sequence

from tracer.cluster.discover.pod_ends import capture_point
from tracer.cluster.discover.readers import NodeState, Read
from tracer.errors import ClusterError
from tracer.model import NodeTunnel, PodEnd, PodRef, WayPoint

NAME = "Calico VXLAN"
DEVICE = "vxlan.calico"


def title(src_end: PodEnd) -> str:
    return NAME


def bypass(src: NodeState, dst_pod: PodRef) -> str:
    return ""  # (the kernel routes every packet through the host veths)


def reads_ahead(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    """The source node's tables this way is read from (with the first round of reads)."""
    return (lambda: src.neighbours, lambda: src.fdb)


def recognizes(src: NodeState, dst_pod: PodRef) -> bool:
    """The source node sends the other pod's packets out of a vxlan device with a VNI of its own
    (not a collect-metadata one: Cilium's)."""
    return is_static_vxlan(src.device_toward(dst_pod.ip))


def is_static_vxlan(dev: dict) -> bool:
    info = dev.get("linkinfo", {})
    return info.get("info_kind") == "vxlan" and not info.get("info_data", {}).get("external")


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
    tunnel = static_vxlan(src, dst, dst_pod, who="Calico programs it statically; is calico-node running on both nodes?")
    dst_dev = tunnel_device_of(tunnel, src, dst)
    t = tunnel
    encap = f"VXLAN VNI {t.vni}, UDP to {t.udp_port}, outer {t.src_node_ip} -> {t.dst_node_ip}"
    return tunnel, [
        capture_point(src, src.link(name=t.device), "tunnel", "egress", (t.src_mac, t.dst_mac),
                      f"{src.name} routes `{t.route}`: TTL-1, and the Ethernet header becomes "
                      f"{t.src_mac} -> {t.dst_mac} ({dst.name}'s {t.device}, a permanent neighbour entry)."),
        *underlay_points(t, src, dst,
                         f"The FDB entry for {t.dst_mac} says dst {t.dst_node_ip}: {t.device} wraps the frame "
                         f"({encap}, +50 bytes) and it leaves {src.name} on the underlay NIC.",
                         f"Step 4: the same encapsulated packet ({encap}) arrives on {dst.name}'s underlay NIC."),
        capture_point(dst, dst_dev, "tunnel", "ingress", (t.src_mac, t.dst_mac),
                      f"UDP port {t.udp_port} belongs to {dst_dev['ifname']}: the kernel strips the outer "
                      f"headers and the inner frame, unchanged since {src.name}'s {t.device}, appears here."),
    ]


def static_vxlan(src: NodeState, dst: NodeState, dst_pod: PodRef, *, who: str) -> NodeTunnel:
    """A VXLAN hop whose every step is a table entry: the route via the other tunnel address
    `onlink`, its permanent neighbour entry, the FDB entry naming the other node (Calico VXLAN,
    Flannel VXLAN). `who`: the hint when the neighbour entry is missing (who writes it)."""
    hop = src.route_get(dst_pod.ip)
    dev = src.device_toward(dst_pod.ip)
    info = dev["linkinfo"]["info_data"]
    gateway = hop.get("gateway")
    if gateway is None:
        raise ClusterError(f"node {src.name} has no next hop for {dst_pod.ip} on {hop['dev']}")
    dst_mac = src.neighbour(hop["dev"], gateway)
    if dst_mac is None:
        raise ClusterError(f"node {src.name} has no neighbour entry for {gateway} on {hop['dev']}", hint=who)
    dst_node_ip = src.fdb_dst(hop["dev"], dst_mac)
    if dst_node_ip is None:
        raise ClusterError(f"node {src.name} has no FDB entry for {dst_mac} on {hop['dev']}")
    under_src = src.link(name=src.route_get(dst_node_ip)["dev"])
    under_dst = dst.link_with_address(dst_node_ip)
    if under_dst is None:
        raise ClusterError(f"the FDB entry on {src.name} sends to {dst_node_ip}, but node {dst.name} has no such address")
    return NodeTunnel(
        device=hop["dev"], vni=info["id"], udp_port=info.get("port", 8472), mtu=dev["mtu"],
        src_mac=dev["address"], dst_mac=dst_mac, dst_tunnel_ip=gateway,
        src_node_ip=info.get("local", ""), dst_node_ip=dst_node_ip, route=src.route_for(dst_pod.ip),
        underlay_src=under_src["ifname"], underlay_src_mac=under_src["address"],
        underlay_dst=under_dst["ifname"], underlay_dst_mac=under_dst["address"],
    )


def tunnel_device_of(t: NodeTunnel, src: NodeState, dst: NodeState) -> dict:
    """The other node's tunnel device: the one with the MAC the neighbour entry gives."""
    dst_dev = next((l for l in dst.links if l["address"] == t.dst_mac), None)
    if dst_dev is None:
        raise ClusterError(f"node {dst.name} has no tunnel device with MAC {t.dst_mac}",
                           hint=f"the neighbour entry on {src.name} is stale")
    return dst_dev


def underlay_points(t: NodeTunnel, src: NodeState, dst: NodeState, leaves: str, arrives: str) -> list[WayPoint]:
    """The two underlay NICs of the hop, the outer (or, routed, the only) Ethernet header between them."""
    outer = (t.underlay_src_mac, t.underlay_dst_mac)
    return [capture_point(src, src.link(name=t.underlay_src), "underlay", "egress", outer, leaves),
            capture_point(dst, dst.link(name=t.underlay_dst), "underlay", "ingress", outer, arrives)]
