"""The Flannel VXLAN data path (k3s' default): the way between two nodes through flannel.<VNI>.

flanneld writes, per other node, one route (`10.42.1.0/24 via 10.42.1.0 dev flannel.1 onlink`),
one permanent neighbour entry (the other lease's .0 -> the other flannel.1's MAC) and one FDB
entry (that MAC -> the other node's underlay address): the same table-driven VXLAN as Calico's
(tracer.cluster.discover.calico_vxlan.static_vxlan), VNI 1 on the kernel's port 8472 by default.
A data-path module of tracer.cluster.discover (see `DataPath` there).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.cluster.discover.calico_vxlan import (
    is_static_vxlan, reads_after, reads_ahead, static_vxlan, tunnel_device_of, underlay_points,
)
from tracer.cluster.discover.pod_ends import capture_point
from tracer.cluster.discover.readers import NodeState
from tracer.model import NodeTunnel, PodEnd, PodRef, WayPoint

NAME = "Flannel VXLAN"
DEVICE = "flannel.1"
_DEVICE = re.compile(r"^flannel\.\d+$")

__all__ = ["DEVICE", "NAME", "between_nodes", "bypass", "reads_after", "reads_ahead", "recognizes", "title"]


def title(src_end: PodEnd) -> str:
    return NAME


def bypass(src: NodeState, dst_pod: PodRef) -> str:
    return ""  # (the kernel routes every packet through the host veths)


def recognizes(src: NodeState, dst_pod: PodRef) -> bool:
    """The route to the other pod goes out of flanneld's device, `flannel.<VNI>`."""
    dev = src.device_toward(dst_pod.ip)
    return is_static_vxlan(dev) and bool(_DEVICE.match(dev["ifname"]))


def between_nodes(src: NodeState, dst: NodeState, dst_pod: PodRef) -> tuple[NodeTunnel, Sequence[WayPoint]]:
    t = static_vxlan(src, dst, dst_pod, who="flanneld writes it for every node with a lease: is flannel running there?")
    dst_dev = tunnel_device_of(t, src, dst)
    encap = f"VXLAN VNI {t.vni}, UDP to {t.udp_port}, outer {t.src_node_ip} -> {t.dst_node_ip}"
    return t, [
        capture_point(src, src.link(name=t.device), "tunnel", "egress", (t.src_mac, t.dst_mac),
                      f"{src.name} routes `{t.route}` (flanneld's route for {dst.name}'s lease): TTL-1, and the "
                      f"Ethernet header becomes {t.src_mac} -> {t.dst_mac} ({dst.name}'s {dst_dev['ifname']}, "
                      f"flanneld's permanent neighbour entry for {t.dst_tunnel_ip})."),
        *underlay_points(t, src, dst,
                         f"flanneld's FDB entry for {t.dst_mac} says dst {t.dst_node_ip}: {t.device} wraps the frame "
                         f"({encap}, +50 bytes) and it leaves {src.name} on the underlay NIC.",
                         f"The same encapsulated packet ({encap}) arrives on {dst.name}'s underlay NIC."),
        capture_point(dst, dst_dev, "tunnel", "ingress", (t.src_mac, t.dst_mac),
                      f"UDP port {t.udp_port} belongs to {dst_dev['ifname']}: the kernel strips the outer headers "
                      f"and the inner frame, unchanged since {src.name}'s {t.device}, appears here."),
    ]
