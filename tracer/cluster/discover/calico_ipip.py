"""Calico's IPIP data path (ipipMode Always): the other node's block routed `via <its underlay
IP> dev tunl0 onlink`; tunl0 (NOARP) puts an outer IPv4 header, protocol 4, around the packet
(+20 bytes) and sends it to that address; there is no FDB and no neighbour entry on tunl0, and
captures there are raw IP (no Ethernet header). A data-path module of tracer.cluster.discover.
"""

from __future__ import annotations

from collections.abc import Sequence

from tracer.cluster.discover.calico_vxlan import underlay_points
from tracer.cluster.discover.pod_ends import capture_point
from tracer.cluster.discover.readers import NodeState, Read
from tracer.errors import ClusterError
from tracer.model import NodeTunnel, PodEnd, PodRef, WayPoint

NAME = "Calico IPIP"
DEVICE = "tunl0"


def title(src_end: PodEnd) -> str:
    return NAME


def bypass(src: NodeState, dst_pod: PodRef) -> str:
    return ""  # (the kernel routes every packet through the host veths)


def reads_ahead(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    return ()


def recognizes(src: NodeState, dst_pod: PodRef) -> bool:
    return src.device_toward(dst_pod.ip).get("linkinfo", {}).get("info_kind") == "ipip"


def reads_after(src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
    return ()


def between_nodes(src: NodeState, dst: NodeState, dst_pod: PodRef) -> tuple[NodeTunnel, Sequence[WayPoint]]:
    hop = src.route_get(dst_pod.ip)
    dev = src.device_toward(dst_pod.ip)
    peer = hop.get("gateway")
    if peer is None:
        raise ClusterError(f"node {src.name} routes {dst_pod.ip} into {dev['ifname']} with no next hop: no peer node")
    under_dst = dst.link_with_address(peer)
    if under_dst is None:
        raise ClusterError(f"node {src.name} sends {dst_pod.ip} through {dev['ifname']} to {peer}, which is not an "
                           f"address of {dst.name}, the pod's node")
    under_src = src.link(name=src.route_get(peer)["dev"])
    src_ip = next((a["local"] for a in under_src.get("addr_info", []) if a.get("family") == "inet"), "")
    dst_dev = next((l for l in dst.links if l.get("linkinfo", {}).get("info_kind") == "ipip"
                    and l["ifname"] == dev["ifname"]), None)
    if dst_dev is None:
        raise ClusterError(f"node {dst.name} has no {dev['ifname']} to take the IPIP packets in")
    t = NodeTunnel(device=dev["ifname"], vni=None, udp_port=None, mtu=dev["mtu"], src_mac="", dst_mac="",
                   dst_tunnel_ip="", src_node_ip=src_ip, dst_node_ip=peer, route=src.route_for(dst_pod.ip),
                   underlay_src=under_src["ifname"], underlay_src_mac=under_src["address"],
                   underlay_dst=under_dst["ifname"], underlay_dst_mac=under_dst["address"], encapsulation="ipip")
    encap = f"IP-in-IP (protocol 4), outer {src_ip} -> {peer}, +20 bytes"
    return t, [
        capture_point(src, dev, "tunnel", "egress", ("", ""),
                      f"{src.name} routes `{t.route}`: TTL-1 into {dev['ifname']}, which has no link layer (a raw-IP "
                      "capture: no MACs)."),
        *underlay_points(t, src, dst, f"{dev['ifname']} wraps the packet ({encap}) and it leaves {src.name} on "
                         f"{t.underlay_src}.", f"The same packet ({encap}) arrives on {dst.name}'s {t.underlay_dst}."),
        capture_point(dst, dst_dev, "tunnel", "ingress", ("", ""),
                      f"IP protocol 4 for {peer}: {dst.name}'s {dst_dev['ifname']} strips the outer header and the "
                      "inner packet appears here."),
    ]
