"""Bring a lab up and down, and reach into a running one (the API `follow` builds on).

`up` is generic: it checks, journals and creates the namespaces, starts the pods' apps and
waits for them; the wiring itself is the CNI mode's builder module (`BUILDERS`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tracer.cluster.ports import ExecResult
from tracer.model import PodRef, ServiceRef
from tracer.errors import LabError, NotFoundError, PermissionError_, UsageError
from tracer.cluster.lab import agents, kube_proxy, netns, offloads, wiring
from tracer.cluster.lab.state import LabState, ProcessRecord, StateStore, log_tail, start_process, stop_process
from tracer.cluster.lab.topology import (
    CALICO_BGP, CALICO_IPIP, CALICO_VXLAN, CILIUM_GENEVE, CILIUM_VXLAN, FLANNEL_HOST_GW, FLANNEL_VXLAN, UNDERLAY, Names,
    Topology, without_dns,
)

# CNI mode -> `module` with `build(topology, names)`, or `module:function` (one module, two modes).
BUILDERS = {
    CALICO_VXLAN: "tracer.cluster.lab.calico_vxlan",
    CALICO_BGP: "tracer.cluster.lab.calico_bgp",
    CALICO_IPIP: "tracer.cluster.lab.calico_ipip",
    FLANNEL_VXLAN: "tracer.cluster.lab.flannel:build_vxlan",
    FLANNEL_HOST_GW: "tracer.cluster.lab.flannel:build_host_gw",
    CILIUM_VXLAN: "tracer.cluster.lab.cilium:build_vxlan",
    CILIUM_GENEVE: "tracer.cluster.lab.cilium:build_geneve",
}
HTTP_PORT = 80
NETNS_AWARE = ("ip", "bridge")
"""Tools that enter a named network namespace themselves (-n), without `ip netns exec`."""
HTTPBIN_READY_TIMEOUT = 20.0

Progress = Callable[[str], None]


def require_root(command: str) -> None:
    """`command` is what the user ran, e.g. "lab up" or "follow" (on the lab)."""
    if os.geteuid() != 0:
        raise PermissionError_(
            f"tracer {command} needs root to work with the lab's network namespaces", hint=f"sudo tracer {command} ..."
        )


@dataclass(frozen=True, kw_only=True)
class LabNode:
    """A node of the running lab."""

    name: str
    netns: str
    """Network namespace the node's commands run in."""
    underlay_ip: str
    underlay_nic: str
    underlay_mac: str
    block: str
    tunnel_device: str
    tunnel_ip: str
    tunnel_mac: str


@dataclass(frozen=True, kw_only=True)
class LabPod:
    """A pod of the running lab."""

    name: str
    namespace: str
    """Kubernetes namespace (always `default` in the lab)."""
    node: str
    ip: str
    mac: str
    """MAC of the pod's eth0."""
    netns: str
    host_veth: str
    """The `cali...` end of the pod's veth on its node."""
    host_veth_mac: str
    app: str
    identity: int = 0
    """Cilium: the pod's security identity."""

    def ref(self) -> PodRef:
        return PodRef(name=self.name, namespace=self.namespace, node=self.node, ip=self.ip)


class Lab:
    """A running lab, read from its state file; look up pods and nodes, run commands in them."""

    def __init__(self, state: LabState, store: StateStore):
        self.state = state
        self.store = store
        self.names = Names(prefix=state.prefix)
        topo = state.topology
        self.nodes = tuple(
            LabNode(
                name=n.name, netns=self.names.netns(n.name), underlay_ip=n.underlay_ip,
                underlay_nic=topo.underlay_nic, underlay_mac=n.underlay_mac, block=n.block,
                tunnel_device=topo.tunnel_device, tunnel_ip=n.tunnel_ip, tunnel_mac=n.tunnel_mac,
            )
            for n in topo.nodes
        )
        self.pods = tuple(
            LabPod(
                name=p.name, namespace=p.namespace, node=p.node, ip=p.ip, mac=p.mac,
                netns=self.names.netns(p.name), host_veth=p.host_veth, host_veth_mac=p.host_veth_mac, app=p.app, identity=p.identity,
            )
            for p in topo.pods
        )

    @classmethod
    def load(cls, store: StateStore | None = None) -> Lab:
        """The lab recorded in the state (TRACER_LAB_PREFIX / TRACER_STATE_DIR); NotFoundError if none."""
        store = store or StateStore.from_env()
        state = store.load()
        if state is None:
            raise NotFoundError(f"no lab is up (prefix {store.prefix!r})", hint="run: tracer lab up")
        return cls(state, store)

    @property
    def topology(self) -> Topology:
        return self.state.topology

    def pod(self, name: str) -> LabPod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise NotFoundError(f"no pod {name!r} in the lab", hint="pods: " + ", ".join(p.name for p in self.pods))

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise NotFoundError(f"no node {name!r} in the lab", hint="nodes: " + ", ".join(n.name for n in self.nodes))

    def netns(self, name: str) -> str:
        """Namespace of a pod or node, by name; `underlay` is the L2 segment between the nodes (its
        bridge is the switch the nodes' NICs hang on: `bridge fdb` there shows what it learnt)."""
        for item in (*self.pods, *self.nodes):
            if item.name == name:
                return item.netns
        if name == UNDERLAY:
            return Names(prefix=self.state.prefix).underlay
        raise NotFoundError(
            f"no pod or node {name!r} in the lab",
            hint="pods: " + ", ".join(p.name for p in self.pods) + "; nodes: " + ", ".join(n.name for n in self.nodes)
            + f"; the nodes' L2 segment: {UNDERLAY}",
        )

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside the pod's or node's namespace."""
        return netns.exec_argv(self.netns(name), argv)

    def exec(self, name: str, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = 30) -> ExecResult:
        """Run `argv` in a pod's or node's namespace; return its exit code and output."""
        try:
            proc = subprocess.run(self.argv(name, argv), input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{' '.join(argv)} in {name} did not finish within {timeout} s") from e
        return ExecResult(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start `argv` in a pod's or node's namespace (e.g. a tcpdump); the caller ends it."""
        return subprocess.Popen(self.argv(name, argv), **kwargs)

    def backend(self) -> LabBackend:
        return LabBackend(self)


@dataclass(frozen=True)
class LabBackend:
    """The lab as a `tracer.cluster.ports.Backend`: pods and nodes are namespaces."""

    lab: Lab

    def pod(self, name: str) -> PodRef:
        return self.lab.pod(name).ref()

    def service(self, name: str, namespace: str | None = None, *, cluster_ip: str | None = None) -> ServiceRef:
        services = self.lab.topology.services
        found = next((s for s in services if (s.cluster_ip == cluster_ip if cluster_ip else
                                              s.name == name and s.namespace == (namespace or "default"))), None)
        if found is None:
            what = f"ClusterIP {cluster_ip}" if cluster_ip else f"the name {namespace or 'default'}/{name}"
            have = ", ".join(f"{s.namespace}/{s.name} ({s.cluster_ip})" for s in services) or "none"
            raise NotFoundError(f"no Service of the lab has {what}", hint=f"the lab's Services: {have}")
        port = next((p for p in found.ports if p.protocol == "tcp"), None)
        if port is None:
            raise UsageError(f"Service {found.namespace}/{found.name} has no TCP port for curl")
        return ServiceRef(name=found.name, namespace=found.namespace, cluster_ip=found.cluster_ip, port=port.port,
                          target_port=port.target_port, endpoints=found.endpoints)

    def exec_pod(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        return self.lab.exec(pod.name, argv)

    def exec_node(self, node: str, argv: Sequence[str]) -> ExecResult:
        lab_node = self.lab.node(node)
        if argv and argv[0] in NETNS_AWARE:  # `ip -n NS ...`: the same, one process fewer
            proc = subprocess.run([argv[0], "-n", lab_node.netns, *argv[1:]], capture_output=True, timeout=30)
            return ExecResult(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        return self.lab.exec(lab_node.name, argv)

    def close(self) -> None:
        """Nothing to remove (a `DiscoveryBackend`): every read is a process that has ended."""


def up(topology: Topology, *, store: StateStore | None = None, progress: Progress = lambda _: None,
       warm_agents: bool = True) -> Lab:
    """Build the lab in the kernel; on any failure tear down what was built, then raise.
    `warm_agents`: start a capture agent server on each node, kept until `down`
    (tracer.cluster.lab.agents)."""
    require_root("lab up")
    store = store or StateStore.from_env()
    if store.load() is not None:
        raise LabError(
            f"a lab is already up (prefix {store.prefix!r}, state {store.path})",
            hint="tracer lab down   (or use another TRACER_LAB_PREFIX for a second lab)",
        )
    if topology.cni not in BUILDERS:
        raise UsageError(f"no lab builder for CNI mode {topology.cni!r}", hint="modes: " + ", ".join(BUILDERS))
    _check_httpbin_installed(topology)
    offloads.require_ethtool(topology.offloads)
    if topology.kube_proxy == "nftables" and shutil.which("nft") is None:
        raise LabError("--kube-proxy nftables needs nft", hint="apt-get install nftables (./dev.sh installs it)")
    if _dns_pods(topology) and shutil.which(kube_proxy.DNS_SERVER) is None:
        topology = without_dns(topology)  # (the Services by IP still work; `lab status` says why no DNS)
    names = Names(prefix=store.prefix)
    wiring.refuse_without_devices(topology.cni, names)
    wanted = names.all(topology)
    if taken := [n for n in wanted if netns.exists(n)]:
        raise LabError(
            f"network namespace {taken[0]} exists, but no lab state records it",
            hint=f"tracer leaves it alone: remove it yourself (ip netns del {taken[0]}) or set TRACER_LAB_PREFIX",
        )
    module, _, function = BUILDERS[topology.cni].partition(":")
    build = getattr(importlib.import_module(module), function or "build")
    state = LabState(prefix=store.prefix, topology=topology, warm=warm_agents)
    try:
        progress("creating network namespaces")
        state.namespaces = wanted
        store.save(state)  # journal first: `down` can clean up even if this process dies
        netns.add(wanted)
        progress("starting httpbin")  # early: gunicorn's start is the slowest part
        for pod in topology.pods:
            if pod.app == "httpbin":
                state.processes.append(_start_httpbin(names.netns(pod.name), store.log_path(pod.name)))
                store.save(state)
        if warm_agents:  # (they import scapy while the rest is built)
            agents.start(state, store, wait=False)
        state.etc_dirs = kube_proxy.resolv_conf_dirs(topology, names)
        store.save(state)  # (journal first, as the namespaces: down removes them whatever happens next)
        kube_proxy.write_resolv_confs(topology, names)
        progress(f"wiring {topology.cni}")
        build(topology, names)
        if topology.offloads != offloads.NONE:
            progress(f"setting the underlay NICs' offloads ({topology.offloads})")
            offloads.apply(topology, names)
        progress("programming kube-proxy's rules" + (" and starting the cluster DNS" if _dns_pods(topology) else ""))
        kube_proxy.program(topology, names)
        for pod in _dns_pods(topology):
            state.processes.append(_start(names.netns(pod.name), store.log_path(pod.name),
                                          kube_proxy.dns_argv(topology, pod.ip), "the cluster DNS"))
            store.save(state)
        progress("waiting for httpbin")
        lab = Lab(state, store)
        _wait_for_httpbin(lab)
        progress("checking curl -> httpbin")
        _check_data_path(lab)
        if warm_agents:
            progress("waiting for the warm capture agents")
            agents.wait_listening(state, store)
        state.complete = True
        store.save(state)
    except BaseException:
        _teardown(state, store)
        raise
    return lab


def down(store: StateStore | None = None) -> LabState | None:
    """Remove what the state lists (processes by PID, then namespaces); None if no lab is up."""
    require_root("lab down")
    store = store or StateStore.from_env()
    with store.locked():  # (no follow starts a warm agent meanwhile)
        state = store.load()
        if state is not None:
            _teardown(state, store)
    return state


def _teardown(state: LabState, store: StateStore) -> None:
    agents.stop(state, store)
    for proc in state.processes:
        stop_process(proc)
    netns.delete(state.namespaces)
    kube_proxy.remove_etc(state.etc_dirs, state.prefix)
    store.remove(state)


def _dns_pods(topology: Topology) -> list:
    return [p for p in topology.pods if p.app == "dns"]


HTTPBIN_MODULES = ("httpbin", "gunicorn")
"""What the lab's httpbin pods run: the real httpbin application under gunicorn, in this Python."""


def _check_httpbin_installed(topology: Topology) -> None:
    """Before anything is built: the httpbin pods' Python packages are there (else the lab would
    fail half-built, its reason in a log)."""
    if not any(p.app == "httpbin" for p in topology.pods):
        return
    missing = [m for m in HTTPBIN_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise LabError(f"the lab's httpbin pods need the Python packages {', '.join(missing)}, which this Python "
                       f"({sys.executable}) does not have",
                       hint=f"{sys.executable} -m pip install {' '.join(missing)}   (they come with tracer itself)")


def _start_httpbin(ns: str, log_path: Any) -> ProcessRecord:
    return _start(ns, log_path, [sys.executable, "-m", "gunicorn", "--bind", f"0.0.0.0:{HTTP_PORT}", "--workers", "1",
                                 "--access-logfile", "-", "--error-logfile", "-", "httpbin:app"], "httpbin")


def _start(ns: str, log_path: Any, argv: list[str], what: str) -> ProcessRecord:
    """A pod's server process, in its namespace, its output in the lab's log for that pod."""
    return start_process(ns, log_path, argv, what)


def _http_status(lab: Lab, client: str, url: str, max_time: float) -> str:
    res = lab.exec(client, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(max_time), url])
    return res.stdout.decode().strip()


def _wait_for_httpbin(lab: Lab) -> None:
    deadline = time.monotonic() + HTTPBIN_READY_TIMEOUT
    for proc in lab.state.processes:
        pod = next(p for p in lab.pods if p.netns == proc.netns)
        if pod.app != "httpbin":
            continue
        while _http_status(lab, pod.name, f"http://127.0.0.1:{HTTP_PORT}/status/200", 1) != "200":
            if not proc.alive():
                raise LabError(f"httpbin in pod {pod.name} exited", hint=f"see {proc.log}: {log_tail(proc.log)}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"httpbin in pod {pod.name} did not answer within {HTTPBIN_READY_TIMEOUT:.0f} s",
                    hint=f"see {proc.log}",
                )
            time.sleep(0.05)


def _check_data_path(lab: Lab) -> None:
    """One real request from the client pod to every httpbin pod: the lab is only up if it works."""
    clients = [p for p in lab.pods if p.app == "curl"]
    for client in clients[:1]:
        for server in (p for p in lab.pods if p.app == "httpbin"):
            status = _http_status(lab, client.name, f"http://{server.ip}:{HTTP_PORT}/status/200", 3)
            if status != "200":
                raise LabError(
                    f"the lab is wired, but {client.name} -> {server.name} ({server.ip}) got no HTTP 200 ({status or 'no answer'})",
                    hint="this is a bug in tracer's lab; please report it with `uname -r`",
                )
        _check_services(lab, client)


def _check_services(lab: Lab, client: LabPod) -> None:
    """The Service by its ClusterIP (kube-proxy's DNAT) and, with the cluster DNS, by its name (the
    pod's resolver, the DNS Service's DNAT to the DNS pod): as a pod in a cluster would ask."""
    topology = lab.topology
    svc = next((s for s in topology.services if s.name == "httpbin"), None)
    if svc is None:
        return
    urls = [f"http://{svc.cluster_ip}/status/200"]
    dns_netns = {lab.netns(p.name) for p in _dns_pods(topology)}
    dns = next((p for p in lab.state.processes if p.netns in dns_netns), None)
    if dns is not None:
        urls.append(f"http://{svc.name}/status/200")
    deadline = time.monotonic() + 5.0
    for url in urls:
        while (status := _http_status(lab, client.name, url, 2)) != "200":
            if dns is not None and not dns.alive():
                raise LabError("the cluster DNS (dnsmasq) exited", hint=f"see {dns.log}: {log_tail(dns.log)}")
            if time.monotonic() > deadline:
                raise LabError(f"the lab is wired, but {client.name} -> {url} got no HTTP 200 ({status or 'no answer'})",
                               hint="see `tracer lab exec worker1 -- iptables-save -t nat`; a bug in tracer's lab")
            time.sleep(0.05)

