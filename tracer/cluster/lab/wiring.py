"""What every lab builder wires the same way: the underlay segment between the nodes, each node's
underlay NIC and default route, the pods' veths and their /32 side (Calico's and Cilium's way;
Flannel's bridge is its own), and the batches that do it.

The namespaces exist already (the orchestrator made and recorded them); builders only create
links, addresses, routes, neighbours, FDB entries and sysctls inside them.
"""

from __future__ import annotations

import ipaddress
import subprocess

from tracer.cluster.lab import netns
from tracer.cluster.lab.topology import CALICO_IPIP, CILIUM_GENEVE, Names, NodeSpec, PodSpec, Topology
from tracer.errors import LabError

UNDERLAY_BRIDGE = "br0"
UNDERLAY_BRIDGE_MAC = "52:54:00:00:56:01"

# No IPv6 in the lab: router solicitations and MLD reports would only add noise to captures.
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}


def base(topo: Topology, names: Names) -> None:
    """IPv6 off everywhere and the underlay segment's links (its bridge comes up last: `underlay_up`)."""
    for ns in names.all(topo):
        netns.sysctl(ns, NO_IPV6)
    netns.batch(names.underlay, underlay_links(topo, names))


def underlay_links(topo: Topology, names: Names) -> list[str]:
    # Snooping off: else the bridge joins 224.0.0.106 and its IGMP reports land in captures.
    lines = [f"link add {UNDERLAY_BRIDGE} address {UNDERLAY_BRIDGE_MAC} type bridge mcast_snooping 0"]
    for node in topo.nodes:
        # The bridge port is named after the node; its peer becomes the node's eth1.
        lines += [
            f"link add {node.name} type veth peer name {topo.underlay_nic}"
            f" address {node.underlay_mac} netns {names.netns(node.name)}",
            f"link set {node.name} master {UNDERLAY_BRIDGE}",
        ]
    return lines


def underlay_up(topo: Topology, names: Names) -> None:
    prefixlen = ipaddress.IPv4Network(topo.underlay_cidr).prefixlen
    netns.batch(names.underlay, [
        "link set lo up",
        f"addr add {topo.underlay_gateway}/{prefixlen} dev {UNDERLAY_BRIDGE}",
        f"link set {UNDERLAY_BRIDGE} up",
        *(f"link set {node.name} up" for node in topo.nodes),
    ])


def node_underlay(topo: Topology, node: NodeSpec) -> list[str]:
    """lo and the underlay NIC up, its address, the default route via the segment's bridge
    (without a default route proxy-ARP never answers for 169.254.1.1)."""
    prefixlen = ipaddress.IPv4Network(topo.underlay_cidr).prefixlen
    nic = topo.underlay_nic
    return [
        "link set lo up",
        f"link set {nic} up",
        f"addr add {node.underlay_ip}/{prefixlen} dev {nic}",
        f"route add default via {topo.underlay_gateway} dev {nic}",
    ]


def pod_veths(topo: Topology, node: NodeSpec, names: Names) -> list[str]:
    """Each pod's veth on `node`: the host end with its CNI's name and MAC, eth0 in the pod."""
    return [
        f"link add {pod.host_veth} address {pod.host_veth_mac} mtu {topo.veth_mtu} type veth"
        f" peer name eth0 address {pod.mac} mtu {topo.veth_mtu} netns {names.netns(pod.name)}"
        for pod in topo.pods_on(node.name)
    ]


def pod_routes_on_node(topo: Topology, node: NodeSpec) -> list[str]:
    """The /32 way (Calico, Cilium): the host end up and `<pod ip> dev <host end> scope link`."""
    lines = []
    for pod in topo.pods_on(node.name):
        lines += [f"link set {pod.host_veth} up", f"route add {pod.ip}/32 dev {pod.host_veth} scope link"]
    return lines


def pod_side_slash32(pod: PodSpec, gateway: str) -> list[str]:
    """eth0 with the pod IP as a /32, the gateway on-link and the default route via it."""
    return [
        "link set lo up",
        "link set eth0 up",
        f"addr add {pod.ip}/32 dev eth0",
        f"route add {gateway} dev eth0 scope link",
        f"route add default via {gateway} dev eth0",
    ]


def static_vxlan_device(topo: Topology, node: NodeSpec) -> str:
    """The VXLAN device Calico and Flannel both make: its own VNI and port, no learning."""
    return (f"link add {topo.tunnel_device} address {node.tunnel_mac} mtu {topo.mtu} type vxlan"
            f" id {topo.vni} dstport {topo.udp_port} local {node.underlay_ip} dev {topo.underlay_nic} nolearning")


def static_vxlan_tables(topo: Topology, node: NodeSpec) -> list[str]:
    """Its address and, per other node, what calico-node and flanneld both write: the block
    routed via the other tunnel address `onlink` and a permanent neighbour entry for it."""
    vx = topo.tunnel_device
    lines = [f"addr add {node.tunnel_ip}/32 dev {vx}", f"link set {vx} up"]
    for other in other_nodes(topo, node):
        lines += [f"route add {other.block} via {other.tunnel_ip} dev {vx} onlink",
                  f"neigh add {other.tunnel_ip} lladdr {other.tunnel_mac} dev {vx} nud permanent"]
    return lines


def static_vxlan_fdb(topo: Topology, node: NodeSpec) -> list[str]:
    """(for `bridge`) per other node: its tunnel MAC is behind its underlay address."""
    return [f"fdb add {other.tunnel_mac} dev {topo.tunnel_device} dst {other.underlay_ip} self permanent"
            for other in other_nodes(topo, node)]


def other_nodes(topo: Topology, node: NodeSpec) -> list[NodeSpec]:
    return [n for n in topo.nodes if n.name != node.name]


KERNEL_DEVICES = {CALICO_IPIP: ("ipip", "type ipip local 192.0.2.1"), CILIUM_GENEVE: ("geneve", "type geneve external")}
"""The data paths whose devices not every kernel has: the kind, and the `ip link add` arguments that try one."""


def refuse_without_devices(cni: str, names: Names) -> None:
    """Before anything is made: where the data path needs a device kind the kernel lacks, say so.
    Tried in a namespace of the lab's own prefix, removed again."""
    if cni not in KERNEL_DEVICES:
        return
    kind, probe = KERNEL_DEVICES[cni]
    ns = names.netns("probe")
    netns.add([ns])
    try:
        proc = subprocess.run(["ip", "-n", ns, "link", "add", "probe", *probe.split()], capture_output=True, text=True)
    finally:
        netns.delete([ns])
    if proc.returncode != 0:
        why = proc.stderr.strip() or f"ip link add ... type {kind} failed"
        raise LabError(f"--cni {cni} needs {kind} devices, which this kernel does not have (`ip link add ... type "
                       f"{kind}`: {why})", hint=f"load the module where it exists (modprobe {kind}), or take another "
                       "--cni: the lab's VXLAN and routed data paths need only veth, bridge and vxlan")
