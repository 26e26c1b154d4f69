"""The lab's topology as a declarative description: nodes, pods, addresses, CNI mode.

Nothing here touches the kernel. A builder module (one per CNI mode, e.g.
`tracer.cluster.lab.calico_vxlan`) turns a `Topology` into namespaces, links and routes; another
CNI's wiring is another builder reading the same description.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from tracer.errors import UsageError

CALICO_VXLAN = "calico-vxlan"
# The MAC Calico gives every host-side veth, and the gateway address every pod routes to.
CALI_MAC = "ee:ee:ee:ee:ee:ee"
POD_GATEWAY = "169.254.1.1"
MAX_NODES = 20


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """One Kubernetes node: a network namespace with an underlay NIC and a tunnel device."""

    name: str
    """Node name as `kubectl get nodes` shows it, e.g. `worker1`."""
    underlay_ip: str
    """The node's address on the underlay L2 segment (no prefix length)."""
    underlay_mac: str
    """Fixed MAC of the underlay NIC, so captures are deterministic."""
    block: str
    """The node's pod IP block (CIDR, /26 as Calico's IPAM hands out)."""
    tunnel_ip: str
    """The tunnel device's address, taken from the node's own block (used as a /32)."""
    tunnel_mac: str
    """Fixed MAC of the tunnel device (vxlan.calico)."""


@dataclass(frozen=True, kw_only=True)
class PodSpec:
    """One pod: a network namespace with eth0, wired to its node."""

    name: str
    """Pod name, e.g. `curl`."""
    namespace: str = "default"
    """Kubernetes namespace; part of the host veth's name."""
    node: str
    """Name of the node the pod runs on."""
    ip: str
    """Pod IP (a /32 on eth0), inside its node's block."""
    mac: str
    """Fixed MAC of the pod's eth0."""
    app: str
    """What runs in the pod: `curl` (a client, nothing started) or `httpbin` (served on :80)."""

    @property
    def host_veth(self) -> str:
        return calico_veth_name(self.namespace, self.name)


@dataclass(frozen=True, kw_only=True)
class Topology:
    """A whole lab: the CNI mode, the underlay segment, the nodes and their pods."""

    cni: str = CALICO_VXLAN
    """CNI mode; picks the builder module."""
    underlay_cidr: str = "192.168.56.0/24"
    """The L2 segment the nodes' underlay NICs share."""
    underlay_gateway: str = "192.168.56.1"
    """Address of the segment's bridge: the nodes' default route (proxy-ARP needs one)."""
    underlay_nic: str = "eth1"
    """Name of each node's underlay NIC (eth1 as in the exercise)."""
    tunnel_device: str = "vxlan.calico"
    vni: int = 4096
    udp_port: int = 4789
    mtu: int = 1450
    """Pod and tunnel MTU: 50 bytes of VXLAN less than the 1500 underlay."""
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def pods_on(self, node: str) -> tuple[PodSpec, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        fields = {k: v for k, v in data.items() if k not in ("nodes", "pods")}
        return cls(
            **fields,
            nodes=tuple(NodeSpec(**n) for n in data["nodes"]),
            pods=tuple(PodSpec(**p) for p in data["pods"]),
        )


def calico_veth_name(namespace: str, pod: str) -> str:
    """Host veth name as Calico derives it: `cali` + the first 11 hex of sha1("<ns>.<pod>")."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def pod_mac(ip: str) -> str:
    """A recognisable, fixed pod MAC: 0a:58 followed by the pod IP's four bytes."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def _node(index: int, block: str) -> NodeSpec:
    net = ipaddress.IPv4Network(block)
    return NodeSpec(
        name=f"worker{index}",
        underlay_ip=f"192.168.56.{10 + index}",
        underlay_mac=f"52:54:00:00:56:{10 + index:02x}",
        block=block,
        tunnel_ip=str(net.network_address),
        tunnel_mac=f"66:ca:11:c0:00:{index:02x}",
    )


def _pod(name: str, node: str, ip: str, app: str) -> PodSpec:
    return PodSpec(name=name, node=node, ip=ip, mac=pod_mac(ip), app=app)


def exercise(nodes: int = 2) -> Topology:
    """The exercise's cluster: curl on worker1, httpbin on worker2, with the seed's addresses.

    Each extra node `workerN` (N >= 3) gets the block 172.18.N.0/26 and a pod `podN` at
    172.18.N.10 that serves httpbin too, so there is a target on every node.
    """
    if not 2 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be between 2 and {MAX_NODES}, not {nodes}")
    node_specs = [_node(1, "172.18.166.128/26"), _node(2, "172.18.104.0/26")]
    pod_specs = [
        _pod("curl", "worker1", "172.18.166.139", "curl"),
        _pod("httpbin", "worker2", "172.18.104.14", "httpbin"),
    ]
    for i in range(3, nodes + 1):
        node_specs.append(_node(i, f"172.18.{i}.0/26"))
        pod_specs.append(_pod(f"pod{i}", f"worker{i}", f"172.18.{i}.10", "httpbin"))
    return Topology(nodes=tuple(node_specs), pods=tuple(pod_specs))


APPS = ("curl", "httpbin")
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


def with_pods(topology: Topology, extra: tuple[tuple[str, str, str], ...]) -> Topology:
    """The topology with more pods, each (name, node, app), at the next free address of its
    node's block: e.g. a second httpbin on worker1, to compare the same-node way with the other."""
    pods = list(topology.pods)
    for name, node, app in extra:
        if not _POD_NAME.match(name) or name == UNDERLAY:
            raise UsageError(f"--pod {name}={node}: {name!r} is not a pod name (lowercase letters, digits, '-')")
        if any(p.name == name for p in pods) or any(n.name == name for n in topology.nodes):
            raise UsageError(f"--pod {name}={node}: the lab has a pod or node {name!r} already")
        spec = next((n for n in topology.nodes if n.name == node), None)
        if spec is None:
            raise UsageError(f"--pod {name}={node}: the lab has no node {node!r}",
                             hint="nodes: " + ", ".join(n.name for n in topology.nodes))
        if app not in APPS:
            raise UsageError(f"--pod {name}={node}:{app}: the app is one of {', '.join(APPS)}")
        hosts = list(ipaddress.IPv4Network(spec.block).hosts())
        used = {ipaddress.IPv4Address(p.ip) for p in pods} | {ipaddress.IPv4Address(spec.tunnel_ip)}
        mine = [h for h in hosts if h in used]
        free = [h for h in hosts if h not in used and (not mine or h > max(mine))] or [h for h in hosts if h not in used]
        if not free:
            raise UsageError(f"--pod {name}={node}: no address left in {node}'s block {spec.block}")
        pods.append(_pod(name, node, str(free[0]), app))
    return dataclasses.replace(topology, pods=tuple(pods))


UNDERLAY = "underlay"


@dataclass(frozen=True, kw_only=True)
class Names:
    """Network namespace names of one lab: every name starts with the lab's prefix."""

    prefix: str

    def netns(self, name: str) -> str:
        """Namespace of a node or pod (or of the underlay segment, `UNDERLAY`)."""
        return self.prefix + name

    @property
    def underlay(self) -> str:
        return self.netns(UNDERLAY)

    def all(self, topology: Topology) -> list[str]:
        names = [UNDERLAY, *(n.name for n in topology.nodes), *(p.name for p in topology.pods)]
        return [self.netns(n) for n in names]
