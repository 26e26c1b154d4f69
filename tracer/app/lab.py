"""`tracer lab`'s use cases: bring the lab up and down, read its status, run a command in it.
They return tracer.model.lab values (what tracer.render.lab shows) and never print."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable, Sequence

from tracer.cluster.lab import Lab, StateStore, exercise, netns, offloads, require_root
from tracer.cluster.lab import agents as lab_agents
from tracer.cluster.lab.kube_proxy import KUBE_PROXY_MODES as kube_proxy_modes, resolv_conf
from tracer.cluster.lab.topology import CALICO_VXLAN, CNI_NOTES, CNI_TITLES, CNIS, Topology, with_pods
from tracer.cluster.lab import down as remove_lab, up as build_lab
from tracer.errors import ExitCode
from tracer.model.lab import LabNodeView, LabPodView, LabRemoved, LabServiceView, LabUp, LabView, NoLab

Progress = Callable[[str], None]
"""Told each step of `up` as it starts ("creating network namespaces", ...)."""

OFFLOAD_MODES = offloads.MODES
KUBE_PROXY_MODES = kube_proxy_modes

__all__ = ["CNIS", "KUBE_PROXY_MODES", "OFFLOAD_MODES", "Progress", "down", "exec_in", "require_root", "status", "up", "view"]
# require_root is exported for the command: `lab exec` says it needs root before it checks its
# own command line, as it always has.


def up(nodes: int, progress: Progress = lambda _: None, pods: tuple[tuple[str, str, str], ...] = (),
       cni: str = CALICO_VXLAN, offload_mode: str = offloads.NONE, pod_mtu: int | None = None,
       warm_agents: bool = True, kube_proxy: str = "iptables") -> LabUp:
    """Build the exercise's lab with `nodes` nodes and the extra `pods` (name, node, app) on the
    data path `cni`, its underlay NICs' offloads as `offload_mode` says, the pods' MTU `pod_mtu`
    where not the CNI's, kube-proxy's rules in mode `kube_proxy` (iptables, nftables), with a
    warm capture agent on each node unless not `warm_agents`
    (TRACER_LAB_PREFIX / TRACER_STATE_DIR); on failure nothing is left behind. A bad node count or pod is reported
    before the need for root."""
    topology = dataclasses.replace(with_pods(exercise(nodes, cni), pods), offloads=offload_mode, pod_mtu=pod_mtu,
                                   kube_proxy=kube_proxy)
    start = time.monotonic()
    lab = build_lab(topology, progress=progress, warm_agents=warm_agents)
    return LabUp(lab=view(lab), seconds=time.monotonic() - start)


def down() -> LabRemoved | NoLab:
    """Remove every namespace and process the lab's state lists, and nothing else."""
    store = StateStore.from_env()
    state = remove_lab(store)
    if state is None:
        return NoLab(store.prefix)
    return LabRemoved(prefix=state.prefix, namespaces=len(state.namespaces), processes=len(state.processes))


def status() -> LabView | NoLab:
    """The running lab as its state file records it, with each namespace's and app's liveness."""
    store = StateStore.from_env()
    state = store.load()
    if state is None:
        return NoLab(store.prefix)
    return view(Lab(state, store))


def exec_in(target: str, argv: Sequence[str]) -> int:
    """Run `argv` in the namespace of pod or node `target`, attached to this terminal; its exit
    code (130 on Ctrl-C, as a shell says). Needs root; NotFoundError if no lab or no such target."""
    require_root("lab exec")
    lab = Lab.load()
    try:
        return subprocess.run(lab.argv(target, argv)).returncode
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)


def view(lab: Lab) -> LabView:
    """The values `tracer lab status` shows of a lab: what its state says, plus whether each
    node's namespace exists and which PID each pod's app has now (read at this moment)."""
    topo, state = lab.topology, lab.state
    alive = [p for p in state.processes if p.alive()]
    warm = lab_agents.running(state)
    ips = {p.name: p.ip for p in topo.pods}
    return LabView(
        prefix=state.prefix, cni=topo.cni, complete=state.complete, state=str(lab.store.path),
        vni=topo.vni, udp_port=topo.udp_port, mtu=topo.mtu, pod_mtu=topo.veth_mtu, title=CNI_TITLES.get(topo.cni, topo.cni),
        notes=CNI_NOTES.get(topo.cni, ()),
        nodes=tuple(
            LabNodeView(
                name=n.name, netns=n.netns, underlay_ip=n.underlay_ip, underlay_nic=n.underlay_nic,
                underlay_mac=n.underlay_mac, block=n.block, tunnel_device=n.tunnel_device,
                tunnel_ip=n.tunnel_ip, tunnel_mac=n.tunnel_mac, up=(up := netns.exists(n.netns)),
                offloads=offloads.read(n.netns, n.underlay_nic) if up else {},
                agent_pid=agent.pid if (agent := warm.get(n.name)) else None,
            )
            for n in lab.nodes
        ),
        pods=tuple(
            LabPodView(
                name=p.name, namespace=p.namespace, node=p.node, ip=p.ip, mac=p.mac, netns=p.netns,
                host_veth=p.host_veth, host_veth_mac=p.host_veth_mac, app=p.app,
                pid=next((r.pid for r in alive if r.netns == p.netns), None), identity=p.identity,
            )
            for p in lab.pods
        ),
        services=tuple(
            LabServiceView(name=s.name, namespace=s.namespace, cluster_ip=s.cluster_ip,
                           ports=tuple(f"{p.port}/{p.protocol} -> {p.target_port}" for p in s.ports),
                           endpoints=tuple(f"{e} {ips[e]}" for e in s.endpoints if e in ips))
            for s in topo.services
        ),
        dns=_dns_words(topo), offloads=topo.offloads, warm_agents=state.warm, kube_proxy=topo.kube_proxy,
    )


def _dns_words(topo: Topology) -> str:
    dns = next((p for p in topo.pods if p.app == "dns"), None)
    if dns is None:
        return ("no cluster DNS: dnsmasq is not installed (apt-get install dnsmasq-base, then lab down and up); "
                "Services answer by ClusterIP") if topo.services else ""
    svc = next(s for s in topo.services if dns.name in s.endpoints)
    conf = dict(line.split(" ", 1) for line in resolv_conf(topo, "default").splitlines())
    return (f"cluster DNS {svc.cluster_ip} ({svc.name}) -> dnsmasq in pod {dns.namespace}/{dns.name} on {dns.node}; "
            f"a pod of namespace default resolves with search {conf['search']}, {conf['options']}")
