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

from collections.abc import Callable

from tracer.cluster.lab import netns, wiring
from tracer.cluster.lab.topology import POD_GATEWAY, Names, NodeSpec, Topology

NAME = "Calico VXLAN"


def build(topo: Topology, names: Names) -> None:
    build_calico(topo, names, devices=lambda node: [wiring.static_vxlan_device(topo, node)],
                 tables=lambda node: wiring.static_vxlan_tables(topo, node),
                 fdb=lambda node: wiring.static_vxlan_fdb(topo, node))


def build_calico(topo: Topology, names: Names, *, devices: Callable[[NodeSpec], list[str]],
                 tables: Callable[[NodeSpec], list[str]], fdb: Callable[[NodeSpec], list[str]] = lambda node: []) -> None:
    """Calico's pod side and sysctls on every node, with the mode's own `devices` (made with the
    veths), routing `tables` and `fdb` entries per node (VXLAN, IPIP, none)."""
    wiring.base(topo, names)
    for node in topo.nodes:
        ns = names.netns(node.name)
        netns.batch(ns, [*wiring.pod_veths(topo, node, names), *devices(node)])
        netns.sysctl(ns, calico_sysctls(topo, node))
        netns.batch(ns, [*wiring.node_underlay(topo, node), *tables(node), *wiring.pod_routes_on_node(topo, node)])
        if entries := fdb(node):
            netns.batch(ns, entries, tool="bridge")
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
