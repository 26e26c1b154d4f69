"""Wire a `Topology` like Cilium in tunnel mode, with the kernel's own means (no eBPF):

- per node the `cilium_host`/`cilium_net` veth pair, `cilium_host` holding the router IP (the
  block's .1) as a /32; a collect-metadata (`external`) tunnel device, `cilium_vxlan` on UDP
  8472 or `cilium_geneve` on 6081, with no FDB entry: where a packet goes is per route.
- pod: eth0 /32, `<router IP> dev eth0 scope link`, `default via <router IP>`; the host end
  `lxc<12 hex>`, rp_filter off, no proxy-ARP: the router IP is the node's own, so the kernel
  answers the pod's ARP with the lxc MAC (what Cilium's BPF ARP responder answers too).
- the VNI carries the source's security identity: per pod an `ip rule from <pod IP>` picks a
  table whose routes to the other nodes' blocks encapsulate with that identity
  (`10.0.2.0/24 encap ip id <identity> dst <node IP> via <its router IP> dev cilium_vxlan
  onlink`), the node's own traffic uses the main table's (identity 1, the host); a permanent
  neighbour gives each other router IP the other tunnel device's MAC.

Where a real Cilium node differs: its routes to other nodes go via `cilium_host` and the BPF
programs on the lxc and tunnel devices set the tunnel key and redirect (bpf_redirect_peer may
hide packets from the host-side lxc); here the kernel's routing does it, so every hop shows and
each node's forwarding takes the TTL down by one.
"""

from __future__ import annotations

from tracer.cluster.lab import netns, wiring
from tracer.cluster.lab.topology import Names, NodeSpec, Topology

HOST_IDENTITY = 1
"""Cilium's reserved identity of the node itself."""
TABLE_BASE = 100


def build_vxlan(topo: Topology, names: Names) -> None:
    _build(topo, names, f"vxlan external dstport {topo.udp_port}")


def build_geneve(topo: Topology, names: Names) -> None:
    _build(topo, names, f"geneve external dstport {topo.udp_port}")


def _build(topo: Topology, names: Names, kind: str) -> None:
    wiring.base(topo, names)
    dev = topo.tunnel_device
    for node in topo.nodes:
        ns = names.netns(node.name)
        netns.batch(ns, [*wiring.pod_veths(topo, node, names),
                         "link add cilium_host type veth peer name cilium_net",
                         f"link add {dev} address {node.tunnel_mac} mtu {topo.mtu} type {kind}"])
        values: dict[str, str | int] = {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                                        f"net.ipv4.conf.{dev}.rp_filter": 0}
        for pod in topo.pods_on(node.name):
            values[f"net.ipv4.conf.{pod.host_veth}.rp_filter"] = 0
        netns.sysctl(ns, values)
        netns.batch(ns, [*wiring.node_underlay(topo, node), f"addr add {node.tunnel_ip}/32 dev cilium_host",
                         "link set cilium_host up", "link set cilium_net up", f"link set {dev} up",
                         *wiring.pod_routes_on_node(topo, node), *_tunnel_routes(topo, node)])
    for pod in topo.pods:
        netns.batch(names.netns(pod.name), wiring.pod_side_slash32(pod, topo.node(pod.node).tunnel_ip))
    wiring.underlay_up(topo, names)


def _tunnel_routes(topo: Topology, node: NodeSpec) -> list[str]:
    dev = topo.tunnel_device
    others = wiring.other_nodes(topo, node)
    lines = [f"neigh add {o.tunnel_ip} lladdr {o.tunnel_mac} dev {dev} nud permanent" for o in others]

    def routes(identity: int, table: str) -> list[str]:
        return [f"route add {o.block} encap ip id {identity} dst {o.underlay_ip} via {o.tunnel_ip} dev {dev} onlink"
                f"{table}" for o in others]

    lines += routes(HOST_IDENTITY, "")
    for k, pod in enumerate(topo.pods_on(node.name)):
        table = TABLE_BASE + k
        lines += [f"rule add from {pod.ip} lookup {table}", *routes(pod.identity, f" table {table}")]
    return lines
