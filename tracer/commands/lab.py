"""`tracer lab up|down|status|exec`: the exercise's cluster in network namespaces."""

from __future__ import annotations

import click
from rich.console import Console

from tracer.app import lab

from tracer.model.lab import NoLab
from tracer.render.lab import building, down_line, no_lab_line, render_status, render_up, status_json, stdout_console


@click.group()
def command() -> None:
    """The exercise's cluster (worker1 + worker2, pods curl and httpbin) in network namespaces:
    Calico VXLAN, or another CNI's data path (--cni)."""


@command.command("up")
@click.option("--nodes", "nodes", type=int, default=2, show_default=True,
              help="Number of nodes; each node after worker2 gets a pod podN serving httpbin.")
@click.option("--cni", type=click.Choice(lab.CNIS), default=lab.CNIS[0], show_default=True,
              help="The data path: Calico with VXLAN, no encapsulation (BGP) or IPIP; Flannel VXLAN or host-gw "
                   "(a bridge cni0 per node); Cilium's tunnel with VXLAN or Geneve (collect-metadata, the VNI the "
                   "source's identity). IPIP and Geneve only where the kernel has those devices.")
@click.option("--pod", "pods", multiple=True, metavar="NAME=NODE[:APP]",
              help="One more pod on NODE, serving httpbin (APP httpbin, the default) or a client (curl), at the "
                   "next free address of the node's block. Repeatable.")
@click.option("--offloads", "offload_mode", type=click.Choice(lab.OFFLOAD_MODES), default=lab.OFFLOAD_MODES[0],
              show_default=True,
              help="none: veth's defaults, a TSO super-frame crosses every point whole. real: the underlay NICs as "
                   "real ones, the kernel cuts super-frames into MTU-sized frames before eth1 (no segmentation "
                   "offload there) and GRO merges them again on the receiving eth1: the pcaps differ in "
                   "segmentation from point to point, as on a real node.")
@click.option("--mtu", "pod_mtu", type=click.IntRange(576, 9000), default=None, metavar="BYTES",
              help="The pods' MTU, where it should not be the CNI's (the underlay's 1500 less the encapsulation's "
                   "bytes): --mtu 1500 is a CNI configured without VXLAN's 50, for a class on path-MTU discovery "
                   "(the node answers a full-size packet with ICMP \"fragmentation needed\"); tracer path warns.")
@click.option("--kube-proxy", "kube_proxy", type=click.Choice(lab.KUBE_PROXY_MODES), default="iptables",
              show_default=True,
              help="kube-proxy's mode: iptables (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* in the nat table) or "
                   "nftables (its table `ip kube-proxy`: the service-ips map -> service-* -> endpoint-* chains), as "
                   "kube-proxy writes them; tracer path/follow name the rule that DNATs a Service either way.")
@click.option("--agents/--no-agents", "warm_agents", default=True, show_default=True,
              help="Keep a warm capture agent on each node until lab down (scapy imported once: a follow only "
                   "connects to it); --no-agents: each follow starts its own, as on a cluster without "
                   "`tracer agents install`.")
def up_cmd(nodes: int, cni: str, pods: tuple[str, ...], offload_mode: str, pod_mtu: int | None,
           warm_agents: bool, kube_proxy: str) -> None:
    """Build the lab (needs root); fails cleanly, leaving nothing behind.

    \b
    Examples:
      tracer lab up
      tracer lab up --pod httpbin2=worker1    # the same-node way beside the other: path curl httpbin2
      tracer lab up --cni flannel-vxlan       # k3s' default: a bridge, flannel.1 on UDP 8472, VNI 1
      tracer lab up --offloads real           # then: tracer follow curl httpbin --path /bytes/102400
      tracer lab up --mtu 1500                # pods not lowered by VXLAN's 50 bytes: tracer path warns
      tracer lab up --kube-proxy nftables     # then: tracer lab exec worker1 -- nft list table ip kube-proxy
    """
    extra = tuple(_pod_spec(p) for p in pods)
    err = Console(stderr=True)
    with building(err) as progress:
        result = lab.up(nodes, progress, extra, cni, offload_mode, pod_mtu, warm_agents, kube_proxy)
    render_up(result, err, stdout_console())


@command.command("down")
def down_cmd() -> None:
    """Remove every namespace and process the lab made; nothing else."""
    click.echo(down_line(lab.down()))


@command.command("status")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_cmd(output: str) -> None:
    """Nodes, pods, IPs, host veths and MACs of the running lab."""
    status = lab.status()
    if output == "json":
        click.echo(status_json(status))
    elif isinstance(status, NoLab):
        click.echo(no_lab_line(status))
    else:
        render_status(status, stdout_console())


@command.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("target")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(target: str, argv: tuple[str, ...]) -> int:
    """Run a command in a pod's or node's namespace (or `underlay`, the nodes' L2 segment):
    tracer lab exec curl -- ip route, tracer lab exec underlay -- bridge fdb."""
    lab.require_root("lab exec")  # before the command line's own check, so a user hears of root first
    if argv[:1] == ("--",):
        argv = argv[1:]
    if not argv:
        raise click.UsageError("no command given: tracer lab exec POD|NODE -- CMD...")
    return lab.exec_in(target, argv)


def _pod_spec(spec: str) -> tuple[str, str, str]:
    name, sep, where = spec.partition("=")
    node, _, app = where.partition(":")
    if not (sep and name and node):
        raise click.UsageError(f"--pod {spec!r}: expected NAME=NODE[:APP], e.g. --pod httpbin2=worker1")
    return name, node, app or "httpbin"
