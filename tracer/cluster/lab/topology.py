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
CALICO_BGP = "calico-bgp"
CALICO_IPIP = "calico-ipip"
FLANNEL_VXLAN = "flannel-vxlan"
FLANNEL_HOST_GW = "flannel-host-gw"
CILIUM_VXLAN = "cilium-vxlan"
CILIUM_GENEVE = "cilium-geneve"
CNIS = (CALICO_VXLAN, CALICO_BGP, CALICO_IPIP, FLANNEL_VXLAN, FLANNEL_HOST_GW, CILIUM_VXLAN, CILIUM_GENEVE)
"""The data paths the lab builds (`tracer lab up --cni NAME`); the first is the default."""
CNI_TITLES = {
    CALICO_VXLAN: "Calico VXLAN", CALICO_BGP: "Calico, no encapsulation (BGP routes)", CALICO_IPIP: "Calico IPIP",
    FLANNEL_VXLAN: "Flannel VXLAN", FLANNEL_HOST_GW: "Flannel host-gw", CILIUM_VXLAN: "Cilium tunnel, VXLAN",
    CILIUM_GENEVE: "Cilium tunnel, Geneve",
}
_CILIUM_NOTES = (
    "the VNI is the sending pod's security identity (an `ip rule from <pod IP>` picks a table whose routes "
    "encapsulate with it); there is no FDB: each route names the other node",
    "where a real Cilium node differs: its routes go via cilium_host and eBPF programs on lxc and the tunnel "
    "device set the tunnel key and redirect (bpf_redirect_peer can hide packets from the host-side lxc); here "
    "the kernel routes, so every hop shows and each node takes one off the TTL",
)
CNI_NOTES = {
    CALICO_VXLAN: ("proxy-ARP on every cali* answers the pods' 169.254.1.1 with ee:ee:ee:ee:ee:ee",),
    CALICO_BGP: ("each node routes the other's block via the other's underlay IP out of eth1: no tunnel, nothing "
                 "added; the pod side is Calico's (169.254.1.1, proxy-ARP)",),
    CALICO_IPIP: ("tunl0: IP protocol 4, 20 bytes added, raw IP (no Ethernet header) on tunl0",),
    FLANNEL_VXLAN: ("pod veths are ports of the bridge cni0, whose .1 is the pods' gateway; flannel.1 has one route, "
                    "one neighbour and one FDB entry per other node",),
    FLANNEL_HOST_GW: ("pod veths are ports of the bridge cni0 (.1 the gateway); each node routes the other's /24 via "
                      "the other's underlay IP: no tunnel",),
    CILIUM_VXLAN: _CILIUM_NOTES,
    CILIUM_GENEVE: _CILIUM_NOTES,
}
"""What `tracer lab status` says of each data path, beside its tables."""
# The MAC Calico gives every host-side veth, and the gateway address every pod routes to.
CALI_MAC = "ee:ee:ee:ee:ee:ee"
POD_GATEWAY = "169.254.1.1"
MAX_NODES = 20


@dataclass(frozen=True, kw_only=True)
class AddressPlan:
    """What a CNI family hands out: each node's pod block, the tunnel device and its numbers."""

    blocks: tuple[str, ...]
    """Worker1's and worker2's blocks; node N (N >= 3) gets `extra_block.format(n=N)`."""
    extra_block: str
    pod_hosts: tuple[int, int]
    """curl's and httpbin's host numbers in their node's block; podN's is 10."""
    tunnel_device: str
    """"" when the data path has none (routed)."""
    vni: int | None
    udp_port: int | None
    mtu: int
    cluster_cidr: str = "172.18.0.0/16"
    """What kube-proxy's --cluster-cidr would be: the pods' whole range (its MASQ rule spares it)."""


_CALICO = dict(blocks=("172.18.166.128/26", "172.18.104.0/26"), extra_block="172.18.{n}.0/26", pod_hosts=(11, 14))
PLANS = {
    CALICO_VXLAN: AddressPlan(**_CALICO, tunnel_device="vxlan.calico", vni=4096, udp_port=4789, mtu=1450),
    CALICO_BGP: AddressPlan(**_CALICO, tunnel_device="", vni=None, udp_port=None, mtu=1500),
    CALICO_IPIP: AddressPlan(**_CALICO, tunnel_device="tunl0", vni=None, udp_port=None, mtu=1480),
    # k3s' cluster CIDR 10.42.0.0/16, a /24 per node, flannel.1 (VNI 1) on the kernel's port 8472
    FLANNEL_VXLAN: AddressPlan(blocks=("10.42.0.0/24", "10.42.1.0/24"), extra_block="10.42.{n}.0/24",
                               pod_hosts=(5, 7), tunnel_device="flannel.1", vni=1, udp_port=8472, mtu=1450,
                               cluster_cidr="10.42.0.0/16"),
    FLANNEL_HOST_GW: AddressPlan(blocks=("10.42.0.0/24", "10.42.1.0/24"), extra_block="10.42.{n}.0/24",
                                 pod_hosts=(5, 7), tunnel_device="", vni=None, udp_port=None, mtu=1500,
                                 cluster_cidr="10.42.0.0/16"),
    # Cilium's cluster pool 10.0.0.0/8 in /24s; the VNI is the source's security identity (none fixed)
    CILIUM_VXLAN: AddressPlan(blocks=("10.0.1.0/24", "10.0.2.0/24"), extra_block="10.0.{n}.0/24", pod_hosts=(5, 7),
                              tunnel_device="cilium_vxlan", vni=None, udp_port=8472, mtu=1450, cluster_cidr="10.0.0.0/8"),
    CILIUM_GENEVE: AddressPlan(blocks=("10.0.1.0/24", "10.0.2.0/24"), extra_block="10.0.{n}.0/24", pod_hosts=(5, 7),
                               tunnel_device="cilium_geneve", vni=None, udp_port=6081, mtu=1450,
                               cluster_cidr="10.0.0.0/8"),
}


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
    """The tunnel device's address, taken from the node's own block (used as a /32); Flannel:
    the block's .0, Cilium: the router IP (cilium_host's, the pods' gateway)."""
    tunnel_mac: str
    """Fixed MAC of the tunnel device (vxlan.calico, flannel.1, cilium_vxlan)."""
    bridge_mac: str = ""
    """Flannel: the fixed MAC of cni0, the bridge whose .1 is the pods' gateway."""


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
    veth_name: str = ""
    """The host end of its veth as its CNI names it ("": Calico's name, see host_veth)."""
    veth_mac: str = ""
    """That end's MAC ("": Calico's ee:ee:ee:ee:ee:ee)."""
    identity: int = 0
    """Cilium: the pod's security identity, the VNI of what it sends to another node."""

    @property
    def host_veth(self) -> str:
        return self.veth_name or calico_veth_name(self.namespace, self.name)

    @property
    def host_veth_mac(self) -> str:
        return self.veth_mac or CALI_MAC


@dataclass(frozen=True, kw_only=True)
class ServicePort:
    name: str
    """The port's name in the Service (kube-proxy's chain names hash it), e.g. `http`, `dns`."""
    protocol: str
    """tcp | udp"""
    port: int
    target_port: int


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """A Service as kube-proxy programs it: a ClusterIP and ports, its endpoints the pods named."""

    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[str, ...]
    """Names of the pods behind it (the EndpointSlice's addresses), in order."""


CLUSTER_DNS_IP = "10.152.183.10"
"""microk8s' cluster DNS address (kube-dns), in its Service range 10.152.183.0/24 (DATAPATHS.md §8)."""
HTTPBIN_CLUSTER_IP = "10.152.183.50"
CLUSTER_DOMAIN = "cluster.local"
DNS_POD = "coredns"
"""The cluster DNS pod (kube-system): a real DNS server, dnsmasq, where the lab has one."""


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
    """"" for a data path without one (Calico BGP, Flannel host-gw)."""
    vni: int | None = 4096
    """None where there is no fixed one (Cilium: the source's identity) or no tunnel."""
    udp_port: int | None = 4789
    mtu: int = 1450
    """Pod and tunnel MTU: the encapsulation's bytes less than the 1500 underlay."""
    pod_mtu: int | None = None
    """The pods' veths' MTU where it is not `mtu` (`lab up --mtu`: a CNI configured for the
    underlay's 1500, not leaving VXLAN its 50 bytes)."""
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    services: tuple[ServiceSpec, ...] = ()
    cluster_cidr: str = "172.18.0.0/16"
    """The pods' whole range, kube-proxy's --cluster-cidr (traffic from outside it is masqueraded)."""
    offloads: str = "none"
    """none: veth's defaults (super-frames cross every point whole); real: the underlay NICs
    segment and merge as real ones do (tracer.cluster.lab.offloads)."""
    kube_proxy: str = "iptables"
    """kube-proxy's mode: iptables (the KUBE-* chains in the nat table) or nftables (the table
    `ip kube-proxy`) (tracer.cluster.lab.kube_proxy)."""

    @property
    def veth_mtu(self) -> int:
        """The MTU of the pods' veths (both ends)."""
        return self.pod_mtu or self.mtu

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def pods_on(self, node: str) -> tuple[PodSpec, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        fields = {k: v for k, v in data.items() if k not in ("nodes", "pods", "services")}
        return cls(
            **fields,
            nodes=tuple(NodeSpec(**n) for n in data["nodes"]),
            pods=tuple(PodSpec(**p) for p in data["pods"]),
            services=tuple(ServiceSpec(**{**s, "ports": tuple(ServicePort(**p) for p in s["ports"]),
                                          "endpoints": tuple(s["endpoints"])}) for s in data.get("services", ())),
        )


def calico_veth_name(namespace: str, pod: str) -> str:
    """Host veth name as Calico derives it: `cali` + the first 11 hex of sha1("<ns>.<pod>")."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def pod_mac(ip: str) -> str:
    """A recognisable, fixed pod MAC: 0a:58 followed by the pod IP's four bytes."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def _node(index: int, block: str, cni: str = CALICO_VXLAN) -> NodeSpec:
    net = ipaddress.IPv4Network(block)
    tunnel_ip = net.network_address + (1 if cni.startswith("cilium") else 0)  # (Cilium: the router IP, .1)
    return NodeSpec(
        name=f"worker{index}",
        underlay_ip=f"192.168.56.{10 + index}",
        underlay_mac=f"52:54:00:00:56:{10 + index:02x}",
        block=block,
        tunnel_ip=str(tunnel_ip),
        tunnel_mac=f"66:ca:11:c0:00:{index:02x}",
        bridge_mac=f"6e:cb:00:00:00:{index:02x}" if cni.startswith("flannel") else "",
    )


def _pod(name: str, node: str, ip: str, app: str, cni: str = CALICO_VXLAN, namespace: str = "default") -> PodSpec:
    """A pod with the host veth its CNI would give it (a fixed name and MAC, so captures are
    deterministic: real Flannel and Cilium names and MACs are random or hashed per endpoint)."""
    digest = hashlib.sha256(f"{cni}/{name}".encode()).hexdigest()
    if cni.startswith("flannel"):  # the bridge plugin: veth + 8 hex, a random MAC
        return PodSpec(name=name, namespace=namespace, node=node, ip=ip, mac=pod_mac(ip), app=app,
                       veth_name="veth" + digest[:8],
                       veth_mac="ca:fe:" + ":".join(digest[8 + 2 * i:10 + 2 * i] for i in range(4)))
    if cni.startswith("cilium"):  # lxc + 12 hex of the endpoint; an identity of the cluster's range
        return PodSpec(name=name, namespace=namespace, node=node, ip=ip, mac=pod_mac(ip), app=app,
                       veth_name="lxc" + digest[:12],
                       veth_mac="da:7e:" + ":".join(digest[12 + 2 * i:14 + 2 * i] for i in range(4)),
                       identity=256 + int(digest[20:28], 16) % 65000)
    return PodSpec(name=name, namespace=namespace, node=node, ip=ip, mac=pod_mac(ip), app=app)


def exercise(nodes: int = 2, cni: str = CALICO_VXLAN) -> Topology:
    """The exercise's cluster: curl on worker1, httpbin on worker2, with the seed's addresses
    (another CNI: its own address plan, see PLANS).

    Each extra node `workerN` (N >= 3) gets its block (Calico: 172.18.N.0/26) and a pod `podN`
    at host 10 of it that serves httpbin too, so there is a target on every node.
    """
    if not 2 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be between 2 and {MAX_NODES}, not {nodes}")
    if cni not in PLANS:
        raise UsageError(f"--cni {cni!r}: the lab builds {', '.join(CNIS)}")
    plan = PLANS[cni]
    blocks = [*plan.blocks, *(plan.extra_block.format(n=i) for i in range(3, nodes + 1))]
    node_specs = [_node(i, block, cni) for i, block in enumerate(blocks, 1)]

    def host(block: str, n: int) -> str:
        return str(ipaddress.IPv4Network(block).network_address + n)

    pod_specs = [
        _pod("curl", "worker1", host(blocks[0], plan.pod_hosts[0]), "curl", cni),
        _pod("httpbin", "worker2", host(blocks[1], plan.pod_hosts[1]), "httpbin", cni),
    ]
    for i in range(3, nodes + 1):
        pod_specs.append(_pod(f"pod{i}", f"worker{i}", host(blocks[i - 1], 10), "httpbin", cni))
    # the cluster DNS on the other node than curl, so that the query crosses the tunnel too
    last = ipaddress.IPv4Network(blocks[1]).num_addresses - 2  # (the block's last host: out of the other pods' way)
    pod_specs.append(_pod(DNS_POD, "worker2", host(blocks[1], last), "dns", cni, namespace="kube-system"))
    services = (
        ServiceSpec(name="httpbin", namespace="default", cluster_ip=HTTPBIN_CLUSTER_IP,
                    ports=(ServicePort(name="http", protocol="tcp", port=80, target_port=80),), endpoints=("httpbin",)),
        ServiceSpec(name="kube-dns", namespace="kube-system", cluster_ip=CLUSTER_DNS_IP,
                    ports=(ServicePort(name="dns", protocol="udp", port=53, target_port=53),
                           ServicePort(name="dns-tcp", protocol="tcp", port=53, target_port=53)),
                    endpoints=(DNS_POD,)),
    )
    return Topology(cni=cni, tunnel_device=plan.tunnel_device, vni=plan.vni, udp_port=plan.udp_port, mtu=plan.mtu,
                    nodes=tuple(node_specs), pods=tuple(pod_specs), services=services,
                    cluster_cidr=plan.cluster_cidr)


def without_dns(topology: Topology) -> Topology:
    """The topology with no cluster DNS (no DNS server to run it): the DNS pod and kube-dns gone."""
    return dataclasses.replace(topology, pods=tuple(p for p in topology.pods if p.app != "dns"),
                               services=tuple(s for s in topology.services if DNS_POD not in s.endpoints))


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
        gateway = ipaddress.IPv4Network(spec.block).network_address + 1  # (Flannel's cni0, Cilium's router)
        used = {ipaddress.IPv4Address(p.ip) for p in pods} | {ipaddress.IPv4Address(spec.tunnel_ip), gateway}
        # (after the node's last workload pod; the cluster DNS sits apart, higher in the block)
        apps = {ipaddress.IPv4Address(p.ip) for p in pods if p.app != "dns"} | {ipaddress.IPv4Address(spec.tunnel_ip)}
        mine = [h for h in hosts if h in apps]
        free = [h for h in hosts if h not in used and (not mine or h > max(mine))] or [h for h in hosts if h not in used]
        if not free:
            raise UsageError(f"--pod {name}={node}: no address left in {node}'s block {spec.block}")
        pods.append(_pod(name, node, str(free[0]), app, topology.cni))
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
