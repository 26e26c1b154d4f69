"""The routed data paths, no encapsulation: Calico with BGP routes (ipipMode = vxlanMode =
Never: BIRD's `172.18.104.0/26 via 192.168.56.12 dev eth1`) and Flannel host-gw (the same
route to the other node's lease). The pods' packets cross the underlay as they are, between
the two nodes' NICs, with the NICs' MACs. A data-path module of tracer.cluster.discover.
"""

from __future__ import annotations

from collections.abc import Sequence

from tracer.cluster.discover.calico_vxlan import underlay_points
from tracer.cluster.discover.readers import NodeState, Read
from tracer.errors import ClusterError
from tracer.model import NodeTunnel, PodEnd, PodRef, WayPoint

NAME = "routed, no encapsulation (Calico BGP, Flannel host-gw)"
DEVICE = "a route via the other node"
TUNNEL_KINDS = frozenset({"vxlan", "geneve", "ipip", "gre", "gretap", "ip6tnl", "sit", "wireguard"})


def title(src_end: PodEnd) -> str:
    return "Flannel host-gw" if src_end.bridge else "Calico, no encapsulation (BGP routes)"


def bypass(src: NodeState, dst_pod: PodRef) -> str:
    return ""  # (the kernel routes every packet through the host veths)


def reads_ahead(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    return (lambda: src.neighbours,)


def recognizes(src: NodeState, dst_pod: PodRef) -> bool:
    """The route to the other pod goes via a gateway out of a device that is no tunnel."""
    hop = src.route_get(dst_pod.ip)
    kind = src.device_toward(dst_pod.ip).get("linkinfo", {}).get("info_kind")
    return bool(hop.get("gateway")) and kind not in TUNNEL_KINDS


def reads_after(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    return ()


def between_nodes(src: NodeState, dst: NodeState, dst_pod: PodRef) -> tuple[NodeTunnel, Sequence[WayPoint]]:
    hop = src.route_get(dst_pod.ip)
    gateway = hop["gateway"]
    nic = src.device_toward(dst_pod.ip)
    under_dst = dst.link_with_address(gateway)
    if under_dst is None:
        raise ClusterError(f"node {src.name} routes {dst_pod.ip} via {gateway}, which is not an address of {dst.name}, "
                           f"the pod's node", hint="a router between the nodes is not a way tracer follows yet")
    src_ip = hop.get("prefsrc") or next((a["local"] for a in nic.get("addr_info", []) if a.get("family") == "inet"), "")
    t = NodeTunnel(device=nic["ifname"], vni=None, udp_port=None, mtu=nic["mtu"], src_mac=nic["address"],
                   dst_mac=under_dst["address"], dst_tunnel_ip="", src_node_ip=src_ip, dst_node_ip=gateway,
                   route=src.route_for(dst_pod.ip), underlay_src=nic["ifname"], underlay_src_mac=nic["address"],
                   underlay_dst=under_dst["ifname"], underlay_dst_mac=under_dst["address"], encapsulation="none")
    return t, underlay_points(
        t, src, dst,
        f"{src.name} routes `{t.route}`: TTL-1, no tunnel; the Ethernet header becomes {t.underlay_src_mac} -> "
        f"{t.underlay_dst_mac} ({dst.name}'s {t.underlay_dst}) and the packet leaves as it is, pod addresses on "
        "the wire.",
        f"It arrives on {dst.name}'s {t.underlay_dst} unchanged but for the MACs: {dst.name} routes it on to the pod.")
