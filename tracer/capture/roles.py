"""The role of a capture point: from its interface name first, from what it carries second."""

from __future__ import annotations

import re

# Interface name -> role, as the CNIs name them (first match wins).
NAME_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), role)
    for pattern, role in (
        (r"^(cali|lxc|veth|tap|vnet|azv|eni|gke|tmp)[0-9a-f]", "pod-veth"),
        (r"^(vxlan\.calico|vxlan-v6\.calico|flannel\.\d+|flannel-v6\.\d+|cilium_vxlan|cilium_geneve|tunl\d+|"
         r"genev_sys_\d+|vxlan_sys_\d+|gre_sys|vxlan\d*|geneve\d*|gre\d+|gretap\d+|ipip\d*|tun\d+|wg\d+|wireguard\.cali)$",
         "tunnel"),
        (r"^(cni\d+|cbr\d+|docker\d+|br-.*|virbr\d+|kube-bridge|weave|ovs-system|br\d+)$", "bridge"),
        (r"^(eth\d+|ens\d+.*|enp.*|eno\d+.*|em\d+|bond\d+|wlan\d+|wlp.*|p\d+p\d+)$", "underlay"),
    )
)


AMBIGUOUS_NAME = re.compile(r"^eth\d+$")
"""Names that pods and nodes alike give their interfaces: only traffic tells which it is."""


def role_from_name(interface: str) -> str | None:
    for pattern, role in NAME_RULES:
        if pattern.match(interface):
            return role
    return None


def infer_role(interface: str, *, encapsulated: int, frames: int, calico_mac_seen: bool) -> str:
    """Decide a point's role: traffic first, the name where traffic cannot tell.

    An interface whose frames mostly carry tunnel headers is an underlay NIC; one that carries
    Calico's ee:ee:ee:ee:ee:ee is a pod veth (its host end `cali*`, or the pod's own `eth0`).
    """
    if encapsulated and encapsulated * 2 >= frames:
        return "underlay"
    if calico_mac_seen:
        return "pod-veth"
    return role_from_name(interface) or "unknown"


# Position of each role on the way in to a node (from the wire towards the pod), and out of it.
INGRESS_RANK = {"underlay": 0, "tunnel": 1, "bridge": 2, "pod-veth": 3, "unknown": 4}
EGRESS_RANK = {"pod-veth": 0, "bridge": 1, "tunnel": 2, "underlay": 3, "unknown": 4}
