"""Wire a `Topology` the way Flannel does (k3s' default; facts: DATAPATHS.md §4, §5).

- pod: eth0 `.X/24` of its node's lease, `default via .1` and the cluster CIDR via .1; the host
  end `veth<8 hex>` is a port of the bridge `cni0` (hairpin on), which holds `.1/24` with a MAC
  of its own: the pods' gateway is the bridge, the kernel answers their ARP for it.
- `flannel-vxlan`: `flannel.1` (VNI 1, the kernel's port 8472, nolearning, MTU 1450, the
  lease's .0 as a /32); per other node what flanneld writes: the route `<its /24> via <its .0>
  dev flannel.1 onlink`, a permanent neighbour `<its .0> -> its flannel.1 MAC` and an FDB entry
  `that MAC dst <its underlay IP>`.
- `flannel-host-gw`: no tunnel; each other node's /24 via its underlay IP out of the NIC.
"""

from __future__ import annotations

import ipaddress

from tracer.cluster.lab import netns, wiring
from tracer.cluster.lab.topology import Names, NodeSpec, PodSpec, Topology

BRIDGE = "cni0"
CLUSTER_CIDR = "10.42.0.0/16"


def gateway(node: NodeSpec) -> str:
    """The lease's .1: cni0's address, every pod's gateway."""
    return str(ipaddress.IPv4Network(node.block).network_address + 1)


def build_vxlan(topo: Topology, names: Names) -> None:
    _build(topo, names, vxlan=True)


def build_host_gw(topo: Topology, names: Names) -> None:
    _build(topo, names, vxlan=False)


def _build(topo: Topology, names: Names, *, vxlan: bool) -> None:
    wiring.base(topo, names)
    for node in topo.nodes:
        ns = names.netns(node.name)
        netns.batch(ns, [*wiring.pod_veths(topo, node, names), *_bridge(topo, node),
                         *([wiring.static_vxlan_device(topo, node)] if vxlan else [])])
        netns.sysctl(ns, {"net.ipv4.ip_forward": 1})
        netns.batch(ns, [*wiring.node_underlay(topo, node), *(wiring.static_vxlan_tables(topo, node) if vxlan else _host_gw(topo, node))])
        if vxlan:
            netns.batch(ns, wiring.static_vxlan_fdb(topo, node), tool="bridge")
    for pod in topo.pods:
        netns.batch(names.netns(pod.name), _pod_side(pod, topo.node(pod.node)))
    wiring.underlay_up(topo, names)


def _bridge(topo: Topology, node: NodeSpec) -> list[str]:
    prefixlen = ipaddress.IPv4Network(node.block).prefixlen
    lines = [f"link add {BRIDGE} address {node.bridge_mac} mtu {topo.mtu} type bridge mcast_snooping 0",
             f"addr add {gateway(node)}/{prefixlen} dev {BRIDGE}", f"link set {BRIDGE} up"]
    for pod in topo.pods_on(node.name):
        lines += [f"link set {pod.host_veth} master {BRIDGE}", f"link set {pod.host_veth} type bridge_slave hairpin on",
                  f"link set {pod.host_veth} up"]
    return lines


def _host_gw(topo: Topology, node: NodeSpec) -> list[str]:
    return [f"route add {other.block} via {other.underlay_ip} dev {topo.underlay_nic}"
            for other in wiring.other_nodes(topo, node)]


def _pod_side(pod: PodSpec, node: NodeSpec) -> list[str]:
    prefixlen = ipaddress.IPv4Network(node.block).prefixlen
    return ["link set lo up", "link set eth0 up", f"addr add {pod.ip}/{prefixlen} dev eth0",
            f"route add default via {gateway(node)} dev eth0", f"route add {CLUSTER_CIDR} via {gateway(node)} dev eth0"]
