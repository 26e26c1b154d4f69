"""Wire a `Topology` the way Calico with no encapsulation does (ipipMode = vxlanMode = Never):
BIRD's routes send each other node's block via that node's underlay address, out of the NIC
(`172.18.104.0/26 via 192.168.56.12 dev eth1`), beside `blackhole <own block>`. The pod side
is Calico's as in VXLAN mode (tracer.cluster.lab.calico_vxlan); MTU 1500, nothing added.
"""

from __future__ import annotations

from tracer.cluster.lab import netns, wiring
from tracer.cluster.lab.calico_vxlan import calico_sysctls
from tracer.cluster.lab.topology import POD_GATEWAY, Names, NodeSpec, Topology

NAME = "Calico BGP, no encapsulation"


def build(topo: Topology, names: Names) -> None:
    wiring.base(topo, names)
    for node in topo.nodes:
        ns = names.netns(node.name)
        netns.batch(ns, wiring.pod_veths(topo, node, names))
        netns.sysctl(ns, calico_sysctls(topo, node))
        netns.batch(ns, [*wiring.node_underlay(topo, node), *wiring.pod_routes_on_node(topo, node),
                         *_bgp_routes(topo, node)])
    for pod in topo.pods:
        netns.batch(names.netns(pod.name), wiring.pod_side_slash32(pod, POD_GATEWAY))
    wiring.underlay_up(topo, names)


def _bgp_routes(topo: Topology, node: NodeSpec) -> list[str]:
    return [f"route add blackhole {node.block}",
            *(f"route add {other.block} via {other.underlay_ip} dev {topo.underlay_nic}"
              for other in wiring.other_nodes(topo, node))]
