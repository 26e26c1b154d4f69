"""Wire a `Topology` the way Calico in `vxlanMode: Always` does (facts: CALICO-DATAPATH.md).

- underlay: a bridge `br0` in its own namespace; each node's `eth1` is a veth into it
  (tracer.cluster.lab.wiring, as for every CNI).
- pod: `eth0` with the pod IP as a /32, MTU 1450, `169.254.1.1 dev eth0 scope link` and
  `default via 169.254.1.1`; the host end `cali<11 hex>` has MAC ee:ee:ee:ee:ee:ee, no IP,
  proxy_arp=1 and proxy_delay=0, and the node routes `<pod ip> dev cali... scope link`.
- node: `vxlan.calico` (VNI 4096, UDP 4789, nolearning, MTU 1450, tunnel IP /32 from its
  block); per other node a block route via its tunnel IP `onlink`, a permanent neighbour
  entry and an FDB entry pointing at its underlay IP.
"""

from __future__ import annotations

from tracer.cluster.lab import netns, wiring
from tracer.cluster.lab.topology import POD_GATEWAY, Names, NodeSpec, Topology

NAME = "Calico VXLAN"


def build(topo: Topology, names: Names) -> None:
    wiring.base(topo, names)
    for node in topo.nodes:
        ns = names.netns(node.name)
        netns.batch(ns, [*wiring.pod_veths(topo, node, names), _vxlan_device(topo, node)])
        netns.sysctl(ns, calico_sysctls(topo, node))
        netns.batch(ns, [*wiring.node_underlay(topo, node), *_node_config(topo, node),
                         *wiring.pod_routes_on_node(topo, node)])
        netns.batch(ns, _node_fdb(topo, node), tool="bridge")
    for pod in topo.pods:
        netns.batch(names.netns(pod.name), wiring.pod_side_slash32(pod, POD_GATEWAY))
    wiring.underlay_up(topo, names)


def calico_sysctls(topo: Topology, node: NodeSpec) -> dict[str, str | int]:
    """Forwarding on; proxy-ARP answering for 169.254.1.1 on every cali* veth, without delay."""
    values: dict[str, str | int] = {"net.ipv4.ip_forward": 1}
    for pod in topo.pods_on(node.name):
        values[f"net.ipv4.conf.{pod.host_veth}.proxy_arp"] = 1
        values[f"net.ipv4.neigh.{pod.host_veth}.proxy_delay"] = 0
    return values


def _vxlan_device(topo: Topology, node: NodeSpec) -> str:
    return (f"link add {topo.tunnel_device} address {node.tunnel_mac} mtu {topo.mtu} type vxlan"
            f" id {topo.vni} dstport {topo.udp_port} local {node.underlay_ip} dev {topo.underlay_nic} nolearning")


def _node_config(topo: Topology, node: NodeSpec) -> list[str]:
    vx = topo.tunnel_device
    lines = [f"addr add {node.tunnel_ip}/32 dev {vx}", f"link set {vx} up"]
    for other in wiring.other_nodes(topo, node):
        lines += [
            f"route add {other.block} via {other.tunnel_ip} dev {vx} onlink",
            f"neigh add {other.tunnel_ip} lladdr {other.tunnel_mac} dev {vx} nud permanent",
        ]
    return lines


def _node_fdb(topo: Topology, node: NodeSpec) -> list[str]:
    return [f"fdb add {other.tunnel_mac} dev {topo.tunnel_device} dst {other.underlay_ip} self permanent"
            for other in wiring.other_nodes(topo, node)]
