"""The way model: the expected way of a request between two pods, as discovery read it from the
live state (`tracer path`), as plain frozen values; `Way.to_dict()` is the tracer.path/v1 document.
"""

from __future__ import annotations

import ipaddress

from dataclasses import asdict, dataclass
from typing import Any

from tracer.model.trace import ROLES

PATH_SCHEMA = "tracer.path/v1"
WAY_POINT_ROLES = tuple(r for r in ROLES if r != "unknown")
"""The roles discovery gives a point: a capture point's roles but `unknown` (discovery only names
interfaces whose part in the way it read; `unknown` is for a capture analyze cannot place)."""


@dataclass(frozen=True, kw_only=True)
class PodRef:
    """A pod as the rest of tracer sees it, whatever backend found it."""

    name: str
    namespace: str
    node: str
    """Name of the node the pod runs on."""
    ip: str


@dataclass(frozen=True, kw_only=True)
class ServiceRef:
    """A Service the request is addressed to, as the cluster's API (or the lab) has it."""

    name: str
    namespace: str
    cluster_ip: str
    port: int
    """The Service's port the request goes to."""
    target_port: int
    """Where kube-proxy's DNAT sends it on the endpoint."""
    endpoints: tuple[str, ...]
    """Names of the pods behind it (the EndpointSlices' target pods)."""
    rule: str = ""
    """The kube-proxy rule that DNATs to the endpoint, read from the source node's nat table, e.g.
    `KUBE-SVC-FREKB6WNWYJLKTHC -> KUBE-SEP-VMWJP37HHZNBJUV4: DNAT --to-destination 172.18.104.14:80`
    ("" where it could not be read)."""


@dataclass(frozen=True, kw_only=True)
class WayPoint:
    """One capture point on the way: an interface on a node that the request passes."""

    node: str
    interface: str
    role: str
    """One of WAY_POINT_ROLES: pod-veth (host end of a pod's veth), bridge, tunnel, underlay."""
    mac: str
    """The interface's own MAC."""
    ifindex: int
    direction: str
    """`ingress` (the packet enters the node here) or `egress` (it leaves the node here)."""
    eth_src: str
    """Expected Ethernet source of the request here (the outer header on the underlay)."""
    eth_dst: str
    """Expected Ethernet destination of the request here."""
    explanation: str
    """One sentence in the exercise's terms."""
    bypass: str = ""
    """Why the data path may carry packets past this point without its capture seeing them
    (e.g. Cilium's bpf_redirect_peer into the pod, past the host side of its lxc veth); "" when
    every packet of the way passes it. A packet not seen here is "not visible here", not lost."""
    asked: bool = False
    """Named with `follow --point`: captured because the user asked for it, its part in the way
    not read from the state (its role from the interface's kind)."""

    @property
    def id(self) -> str:
        return f"{self.node}/{self.interface}"


@dataclass(frozen=True, kw_only=True)
class PodEnd:
    """What discovery read about one pod and the host end of its veth."""

    pod: PodRef
    mac: str
    """MAC of the pod's eth0."""
    mtu: int
    iflink: int
    """eth0@ifN: ifindex of the veth's other end, in the node's namespace."""
    route: str
    """The pod's route to the other pod, as `ip route get` says it."""
    gateway: str | None
    gateway_mac: str | None
    """MAC the pod's ARP table holds for its gateway (None while not resolved)."""
    host_veth: str
    host_veth_mac: str
    host_veth_ifindex: int
    proxy_arp: int | None
    proxy_delay: int | None
    node_route: str
    """The node's route to this pod: `<pod ip> dev <host veth> scope link`."""
    bridge: str | None = None
    """The bridge the host veth is a port of (Flannel's cni0), else None."""
    bridge_mac: str | None = None
    arp_by: str = "proxy-arp"
    """Who answers the pod's ARP for its gateway: `proxy-arp` (the host veth, Calico), `bridge`
    (the bridge owns the gateway address, Flannel), `node` (the gateway is the node's own address:
    the kernel answers with the host veth's MAC, as Cilium's eBPF ARP responder does)."""

    @property
    def gateway_hop_mac(self) -> str:
        """The MAC the pod's frames to its gateway go to: the bridge's, else the host veth's."""
        return self.bridge_mac if self.bridge and self.bridge_mac else self.host_veth_mac


@dataclass(frozen=True, kw_only=True)
class NodeTunnel:
    """The hop between the two nodes: the tunnel devices and the underlay NICs under them (with
    no encapsulation, `device` is the underlay NIC the route takes and no VNI or port is set).

    (Not `tracer.decode.TunnelHeader`, which is one tunnel header seen in one frame.)
    """

    device: str
    vni: int | None
    """None where no VNI is fixed (Cilium: each packet's is its source's security identity) or
    without encapsulation."""
    udp_port: int | None
    mtu: int
    src_mac: str
    """MAC of the source node's tunnel device."""
    dst_mac: str
    """MAC of the destination node's tunnel device (the permanent neighbour entry)."""
    dst_tunnel_ip: str
    src_node_ip: str
    dst_node_ip: str
    """Where the FDB entry sends the encapsulated frame."""
    route: str
    """The source node's route to the destination pod's block."""
    underlay_src: str
    underlay_src_mac: str
    underlay_dst: str
    underlay_dst_mac: str
    encapsulation: str = "vxlan"
    """vxlan | geneve | ipip | none (routed: the pods' packets cross the underlay as they are) |
    unknown (a way no data path of tracer's knows, captured on the points `--point` named)."""
    collect_metadata: bool = False
    """The tunnel device is collect-metadata (`external`): no FDB, the route or eBPF names the peer."""


@dataclass(frozen=True, kw_only=True)
class Way:
    """The expected way of a request from `src` to `dst`: capture points in order."""

    src: PodEnd
    dst: PodEnd
    tunnel: NodeTunnel | None
    """None when both pods run on the same node."""
    points: tuple[WayPoint, ...]
    warnings: tuple[str, ...] = ()
    """Things in the state that break or bend the expected way (e.g. proxy_arp off)."""
    data_path: str = ""
    """The data path discovery recognised, in words (e.g. `Flannel VXLAN`); "" for the same node."""
    service: ServiceRef | None = None
    """The Service the request is addressed to (its ClusterIP DNAT-ed to `dst`), if it is one."""

    @property
    def same_node(self) -> bool:
        return self.tunnel is None

    @property
    def src_node_ip(self) -> str | None:
        return self.tunnel.src_node_ip if self.tunnel else None

    @property
    def dst_node_ip(self) -> str | None:
        return self.tunnel.dst_node_ip if self.tunnel else None

    @property
    def vni(self) -> int | None:
        return self.tunnel.vni if self.tunnel else None

    @property
    def udp_port(self) -> int | None:
        return self.tunnel.udp_port if self.tunnel else None

    def to_dict(self) -> dict[str, Any]:
        """The tracer.path/v1 document (analyze --path-file and follow's path.json read it back:
        its keys and their order are the schema)."""
        def end(e: PodEnd) -> dict[str, Any]:
            d = asdict(e)
            return {**d.pop("pod"), **d}

        return {
            "schema": PATH_SCHEMA,
            "src": end(self.src),
            "dst": end(self.dst),
            "same_node": self.same_node,
            "src_node_ip": self.src_node_ip,
            "dst_node_ip": self.dst_node_ip,
            "vni": self.vni,
            "udp_port": self.udp_port,
            "tunnel": asdict(self.tunnel) if self.tunnel else None,
            "points": [{"id": p.id, **asdict(p)} for p in self.points],
            "warnings": list(self.warnings),
            "data_path": self.data_path,
            "service": asdict(self.service) if self.service else None,
        }


def is_ipv4(s: str) -> bool:
    """Whether `s` is an IPv4 address (a ClusterIP, a pod's IP), not a name."""
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True
