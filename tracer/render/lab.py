"""The views of `tracer lab`: the spinner of `up`, the status tables, the lines of `down` and of
no lab, and the tracer.lab/v1 JSON document of `lab status -o json`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tracer.model.lab import LAB_SCHEMA, LabNodeView, LabRemoved, LabUp, LabView, NoLab


def stdout_console() -> Console:
    """The console the status tables go to."""
    # Piped output is read by people and greps alike: do not cut MACs to fit 80 columns.
    out = Console(highlight=False)
    return out if out.is_terminal else Console(highlight=False, width=200)


@contextlib.contextmanager
def building(err: Console) -> Iterator[Callable[[str], None]]:
    """A spinner on `err` while the lab is built; yields the progress callback that names each step."""
    with err.status("building the lab") as status:
        yield lambda msg: status.update(msg)


def render_up(result: LabUp, err: Console, out: Console) -> None:
    """How long `up` took (on stderr), then the new lab's tables."""
    err.print(f"lab up in {result.seconds:.1f} s (prefix {escape(result.lab.prefix)})")
    render_status(result.lab, out)


def _agent_cell(lab: LabView, node: LabNodeView) -> str:
    if node.agent_pid is not None:
        return f"warm (pid {node.agent_pid})"
    return "not running: the next follow starts it" if lab.warm_agents else "per run (lab up --no-agents)"


def render_status(lab: LabView, out: Console) -> None:
    """Two tables: the nodes (underlay, block, tunnel) and the pods (IP, MACs, host veth, app)."""
    if not lab.complete:
        out.print("[yellow]this lab was not completed (up failed or was interrupted): run tracer lab down[/]")
    tunnel = [f"VNI {lab.vni}" if lab.vni is not None else ("VNI: the source's identity" if lab.udp_port else ""),
              f"UDP {lab.udp_port}" if lab.udp_port else "", f"MTU {lab.mtu}",
              f"pods' MTU {lab.pod_mtu} (lab up --mtu)" if lab.pod_mtu and lab.pod_mtu != lab.mtu else ""]
    title = escape(", ".join(x for x in (f"{lab.cni}: {lab.title or lab.cni}", *tunnel) if x))
    tunneled = any(n.tunnel_device for n in lab.nodes)
    nodes = Table(title=f"nodes ({title})")
    for col in ("node", "netns", "underlay", "NIC MAC", "block", *(("tunnel IP", "tunnel MAC") if tunneled else ()),
                "capture agent"):
        nodes.add_column(col, overflow="fold")
    for n in lab.nodes:
        nodes.add_row(n.name, n.netns, f"{n.underlay_nic} {n.underlay_ip}", n.underlay_mac, n.block,
                      *((f"{n.tunnel_device} {n.tunnel_ip}", n.tunnel_mac) if tunneled else ()), _agent_cell(lab, n))
    pods = Table(title="pods")
    identities = any(p.identity for p in lab.pods)
    for col in ("pod", "node", "IP", "eth0 MAC", "host veth", "veth MAC", *(("identity",) if identities else ()),
                "netns", "app"):
        pods.add_column(col, overflow="fold")
    for p in lab.pods:
        pods.add_row(p.name, p.node, p.ip, p.mac, p.host_veth, p.host_veth_mac,
                     *((str(p.identity),) if identities else ()), p.netns, p.app)
    out.print(nodes, pods)
    if lab.services:
        how = ("nftables table on every node: nft list table ip kube-proxy" if lab.kube_proxy == "nftables" else
               "iptables rules on every node: iptables-save -t nat")
        services = Table(title=f"services (kube-proxy's {how})")
        for col in ("service", "cluster IP", "ports", "endpoints"):
            services.add_column(col, overflow="fold")
        for s in lab.services:
            services.add_row(f"{s.namespace}/{s.name}", s.cluster_ip, "\n".join(s.ports), "\n".join(s.endpoints))
        out.print(services)
    if lab.dns:
        out.print(f"[dim]{escape(lab.dns)}[/]")
    out.print(f"[dim]{escape(offloads_line(lab))}[/]")
    for note in lab.notes:
        out.print(f"[dim]{escape(note)}[/]")


def offloads_line(lab: LabView) -> str:
    """The underlay NICs' offloads: the mode and what ethtool says of each node's NIC now."""
    words = {"real": "the underlay NICs as real ones: no segmentation offload at eth1 (the kernel cuts super-frames "
                     "into MTU-sized frames before its capture), GRO on the receiving eth1",
             "none": "veth's defaults: TSO super-frames cross every point whole, the underlay included "
                     "(lab up --offloads real: as on a real node)"}
    per_node = "; ".join(f"{n.name}/{n.underlay_nic} " + ", ".join(f"{_SHORT.get(k, k)} {v}" for k, v in n.offloads.items())
                         for n in lab.nodes if n.offloads)
    return f"offloads {lab.offloads}: {words.get(lab.offloads, lab.offloads)}" + (f" (ethtool -k: {per_node})" if per_node else "")


_SHORT = {"tcp-segmentation-offload": "tso", "generic-segmentation-offload": "gso",
          "tx-udp_tnl-segmentation": "tx-udp_tnl-segmentation", "generic-receive-offload": "gro"}


def no_lab_line(none: NoLab) -> str:
    return f"no lab is up (prefix {none.prefix!r}); start one with: tracer lab up"


def down_line(result: LabRemoved | NoLab) -> str:
    if isinstance(result, NoLab):
        return f"no lab is up (prefix {result.prefix!r}); nothing to remove"
    n, p = result.namespaces, result.processes
    return f"lab down: removed {n} namespace{'s' * (n != 1)} and {p} process{'es' * (p != 1)}"


def status_json(status: LabView | NoLab) -> str:
    """The tracer.lab/v1 document: one line when no lab is up, else indented."""
    if isinstance(status, NoLab):
        return json.dumps({"schema": LAB_SCHEMA, "up": False, "prefix": status.prefix})
    return json.dumps(lab_document(status), indent=2)


def lab_document(lab: LabView) -> dict[str, Any]:
    # Spelled out key by key: the schema is a promise to scripts, not whatever the values hold.
    return {
        "schema": LAB_SCHEMA,
        "up": True,
        "prefix": lab.prefix,
        "cni": lab.cni,
        "complete": lab.complete,
        "state": lab.state,
        "vni": lab.vni,
        "udp_port": lab.udp_port,
        "mtu": lab.mtu,
        "pod_mtu": lab.pod_mtu or lab.mtu,
        "title": lab.title,
        "notes": list(lab.notes),
        "warm_agents": lab.warm_agents,
        "kube_proxy": lab.kube_proxy,
        "nodes": [
            {"name": n.name, "netns": n.netns, "underlay_ip": n.underlay_ip, "underlay_nic": n.underlay_nic,
             "underlay_mac": n.underlay_mac, "block": n.block, "tunnel_device": n.tunnel_device,
             "tunnel_ip": n.tunnel_ip, "tunnel_mac": n.tunnel_mac, "up": n.up, "offloads": dict(n.offloads),
             "agent_pid": n.agent_pid}
            for n in lab.nodes
        ],
        "pods": [
            {"name": p.name, "namespace": p.namespace, "node": p.node, "ip": p.ip, "mac": p.mac, "netns": p.netns,
             "host_veth": p.host_veth, "host_veth_mac": p.host_veth_mac, "app": p.app, "pid": p.pid,
             "identity": p.identity}
            for p in lab.pods
        ],
        "services": [
            {"name": s.name, "namespace": s.namespace, "cluster_ip": s.cluster_ip, "ports": list(s.ports),
             "endpoints": list(s.endpoints)}
            for s in lab.services
        ],
        "dns": lab.dns,
        "offloads": lab.offloads,
    }
