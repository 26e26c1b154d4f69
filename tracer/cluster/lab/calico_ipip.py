"""Wire a `Topology` the way Calico in `ipipMode: Always` does, where the kernel has IP-in-IP
devices: `tunl0` (the ipip module's fallback device, NOARP, MTU 1480) with the node's tunnel
address as a /32, and each other node's block routed `via <its underlay IP> dev tunl0 onlink`;
outer IP protocol 4, 20 bytes more, no Ethernet header on tunl0 (captures there are raw IP).
The pod side is Calico's (tracer.cluster.lab.calico_vxlan). Where the kernel has no ipip
devices (`ip link add type ipip`: Unknown device type) `lab up` refuses before making anything
(tracer.cluster.lab.wiring.KERNEL_DEVICES).
"""

from __future__ import annotations

import subprocess

from tracer.cluster.lab import wiring
from tracer.cluster.lab.calico_vxlan import build_calico
from tracer.cluster.lab.topology import Names, NodeSpec, Topology

NAME = "Calico IPIP"


def build(topo: Topology, names: Names) -> None:
    def devices(node: NodeSpec) -> list[str]:
        # (the module makes tunl0 in every namespace; a kernel told not to has it made here)
        shown = subprocess.run(["ip", "-n", names.netns(node.name), "link", "show", "tunl0"], capture_output=True)
        return [] if shown.returncode == 0 else ["link add tunl0 type ipip"]

    build_calico(topo, names, devices=devices, tables=lambda node: _tunl0(topo, node))


def _tunl0(topo: Topology, node: NodeSpec) -> list[str]:
    return [f"link set tunl0 mtu {topo.mtu} up", f"addr add {node.tunnel_ip}/32 dev tunl0",
            *(f"route add {other.block} via {other.underlay_ip} dev tunl0 onlink"
              for other in wiring.other_nodes(topo, node))]
