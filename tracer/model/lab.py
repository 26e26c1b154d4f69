"""The lab as `tracer lab` shows it: frozen values read from a running lab (tracer.app.lab builds
them), so its views (tracer.render.lab) need nothing of the cluster layer."""

from __future__ import annotations

from dataclasses import dataclass, field

LAB_SCHEMA = "tracer.lab/v1"


@dataclass(frozen=True, kw_only=True)
class LabNodeView:
    """A node of the lab, and whether its namespace exists now."""

    name: str
    netns: str
    underlay_ip: str
    underlay_nic: str
    underlay_mac: str
    block: str
    tunnel_device: str
    tunnel_ip: str
    tunnel_mac: str
    up: bool
    offloads: dict[str, str] = field(default_factory=dict)
    """The underlay NIC's offload features as `ethtool -k` says them now (tracer.cluster.lab.offloads.SHOWN)."""
    agent_pid: int | None = None
    """The PID of the node's warm capture agent, if one runs (tracer.cluster.lab.agents)."""


@dataclass(frozen=True, kw_only=True)
class LabPodView:
    """A pod of the lab, and the PID of its app if one runs (httpbin; the curl pod has none)."""

    name: str
    namespace: str
    node: str
    ip: str
    mac: str
    """MAC of the pod's eth0."""
    netns: str
    host_veth: str
    host_veth_mac: str
    app: str
    pid: int | None
    identity: int = 0
    """Cilium: the pod's security identity (the VNI of what it sends to another node); else 0."""


@dataclass(frozen=True, kw_only=True)
class LabServiceView:
    """A Service of the lab as kube-proxy programs it on every node."""

    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[str, ...]
    """`port/protocol -> target port`, e.g. `53/udp -> 53`."""
    endpoints: tuple[str, ...]
    """`pod ip` of each endpoint, e.g. `httpbin 172.18.104.14`."""


@dataclass(frozen=True, kw_only=True)
class LabView:
    """A lab whose state file exists; `complete` is False if its `up` failed or was interrupted."""

    prefix: str
    cni: str
    complete: bool
    state: str
    """Path of the state file."""
    vni: int | None
    """None where no VNI is fixed (Cilium: the source's identity) or there is no tunnel."""
    udp_port: int | None
    mtu: int
    """The tunnel's (the CNI's) MTU."""
    nodes: tuple[LabNodeView, ...]
    pods: tuple[LabPodView, ...]
    title: str = ""
    """The data path in words, e.g. `Flannel VXLAN`."""
    notes: tuple[str, ...] = ()
    """What to know of it (and, for Cilium, where the lab differs from a real node)."""
    services: tuple[LabServiceView, ...] = ()
    dns: str = ""
    """The cluster DNS in words (its address, server and pod), or why the lab has none."""
    offloads: str = "none"
    warm_agents: bool = False
    kube_proxy: str = "iptables"
    """kube-proxy's mode on the nodes: iptables or nftables."""
    """Whether the lab keeps warm capture agents (lab up; tracer agents install|uninstall)."""
    """none | real: the underlay NICs as veth's defaults or as real ones (`lab up --offloads`)."""
    pod_mtu: int = 0
    """The pods' MTU (`mtu` unless `lab up --mtu` set another)."""


@dataclass(frozen=True)
class NoLab:
    """No lab is up under this prefix (TRACER_LAB_PREFIX)."""

    prefix: str


@dataclass(frozen=True)
class LabUp:
    """What `lab up` built, and how long it took."""

    lab: LabView
    seconds: float


@dataclass(frozen=True)
class LabRemoved:
    """What `lab down` removed."""

    prefix: str
    namespaces: int
    processes: int
