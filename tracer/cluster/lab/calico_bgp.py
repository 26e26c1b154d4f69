"""Wire a `Topology` the way Calico with no encapsulation does (ipipMode = vxlanMode = Never):
BIRD's routes send each other node's block via that node's underlay address, out of the NIC
(`172.18.104.0/26 via 192.168.56.12 dev eth1`), beside `blackhole <own block>`. The pod side
is Calico's as in VXLAN mode (tracer.cluster.lab.calico_vxlan); MTU 1500, nothing added.
"""

from __future__ import annotations

from tracer.cluster.lab import wiring
from tracer.cluster.lab.calico_vxlan import build_calico
from tracer.cluster.lab.topology import Names, NodeSpec, Topology

NAME = "Calico BGP, no encapsulation"


def build(topo: Topology, names: Names) -> None:
    build_calico(topo, names, devices=lambda node: [], tables=lambda node: _bgp_routes(topo, node))


def _bgp_routes(topo: Topology, node: NodeSpec) -> list[str]:
    return [f"route add blackhole {node.block}",
            *(f"route add {other.block} via {other.underlay_ip} dev {topo.underlay_nic}"
              for other in wiring.other_nodes(topo, node))]
