"""Wire a `Topology` the way Calico in `vxlanMode: Always` does (facts: CALICO-DATAPATH.md).

The namespaces exist already (the orchestrator made and recorded them); this module only
creates links, addresses, routes, neighbours, FDB entries and sysctls inside them.

- underlay: a bridge `br0` in its own namespace; each node's `eth1` is a veth into it.
- pod: `eth0` with the pod IP as a /32, MTU 1450, `169.254.1.1 dev eth0 scope link` and
  `default via 169.254.1.1`; the host end `cali<11 hex>` has MAC ee:ee:ee:ee:ee:ee, no IP,
  proxy_arp=1 and proxy_delay=0, and the node routes `<pod ip> dev cali... scope link`.
- node: `vxlan.calico` (VNI 4096, UDP 4789, nolearning, MTU 1450, tunnel IP /32 from its
  block); per other node a block route via its tunnel IP `onlink`, a permanent neighbour
  entry and an FDB entry pointing at its underlay IP.
"""

from __future__ import annotations

import ipaddress

from tracer.cluster.lab import netns
from tracer.cluster.lab.topology import CALI_MAC, POD_GATEWAY, Names, NodeSpec, PodSpec, Topology

UNDERLAY_BRIDGE = "br0"
UNDERLAY_BRIDGE_MAC = "52:54:00:00:56:01"

# No IPv6 in the lab: router solicitations and MLD reports would only add noise to captures.
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}


def build(topo: Topology, names: Names) -> None:
    for ns in names.all(topo):
        netns.sysctl(ns, NO_IPV6)
    netns.batch(names.underlay, _underlay_links(topo, names))
    for node in topo.nodes:
        netns.batch(names.netns(node.name), _node_links(topo, node, names))
        netns.sysctl(names.netns(node.name), _node_sysctls(topo, node))
        netns.batch(names.netns(node.name), _node_config(topo, node))
        netns.batch(names.netns(node.name), _node_fdb(topo, node), tool="bridge")
    for pod in topo.pods:
        netns.batch(names.netns(pod.name), _pod_config(pod))
    netns.batch(names.underlay, _underlay_up(topo))


def _underlay_links(topo: Topology, names: Names) -> list[str]:
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


def _underlay_up(topo: Topology) -> list[str]:
    prefixlen = ipaddress.IPv4Network(topo.underlay_cidr).prefixlen
    return [
        "link set lo up",
        f"addr add {topo.underlay_gateway}/{prefixlen} dev {UNDERLAY_BRIDGE}",
        f"link set {UNDERLAY_BRIDGE} up",
        *(f"link set {node.name} up" for node in topo.nodes),
    ]


def _node_links(topo: Topology, node: NodeSpec, names: Names) -> list[str]:
    lines = [
        f"link add {pod.host_veth} address {CALI_MAC} mtu {topo.mtu} type veth"
        f" peer name eth0 address {pod.mac} mtu {topo.mtu} netns {names.netns(pod.name)}"
        for pod in topo.pods_on(node.name)
    ]
    lines.append(
        f"link add {topo.tunnel_device} address {node.tunnel_mac} mtu {topo.mtu} type vxlan"
        f" id {topo.vni} dstport {topo.udp_port} local {node.underlay_ip}"
        f" dev {topo.underlay_nic} nolearning"
    )
    return lines


def _node_sysctls(topo: Topology, node: NodeSpec) -> dict[str, str | int]:
    values: dict[str, str | int] = {"net.ipv4.ip_forward": 1}
    for pod in topo.pods_on(node.name):
        values[f"net.ipv4.conf.{pod.host_veth}.proxy_arp"] = 1
        values[f"net.ipv4.neigh.{pod.host_veth}.proxy_delay"] = 0
    return values


def _node_config(topo: Topology, node: NodeSpec) -> list[str]:
    prefixlen = ipaddress.IPv4Network(topo.underlay_cidr).prefixlen
    nic, vx = topo.underlay_nic, topo.tunnel_device
    lines = [
        "link set lo up",
        f"link set {nic} up",
        f"addr add {node.underlay_ip}/{prefixlen} dev {nic}",
        # Without a default route proxy-ARP never answers for 169.254.1.1.
        f"route add default via {topo.underlay_gateway} dev {nic}",
        f"addr add {node.tunnel_ip}/32 dev {vx}",
        f"link set {vx} up",
    ]
    for pod in topo.pods_on(node.name):
        lines += [f"link set {pod.host_veth} up", f"route add {pod.ip}/32 dev {pod.host_veth} scope link"]
    for other in topo.nodes:
        if other.name != node.name:
            lines += [
                f"route add {other.block} via {other.tunnel_ip} dev {vx} onlink",
                f"neigh add {other.tunnel_ip} lladdr {other.tunnel_mac} dev {vx} nud permanent",
            ]
    return lines


def _node_fdb(topo: Topology, node: NodeSpec) -> list[str]:
    return [
        f"fdb add {other.tunnel_mac} dev {topo.tunnel_device} dst {other.underlay_ip} self permanent"
        for other in topo.nodes
        if other.name != node.name
    ]


def _pod_config(pod: PodSpec) -> list[str]:
    return [
        "link set lo up",
        "link set eth0 up",
        f"addr add {pod.ip}/32 dev eth0",
        f"route add {POD_GATEWAY} dev eth0 scope link",
        f"route add default via {POD_GATEWAY} dev eth0",
    ]
