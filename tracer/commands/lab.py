"""`tracer lab up|down|status|exec`: the exercise's cluster in network namespaces."""

from __future__ import annotations

import json
import subprocess
import time

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tracer.cluster.lab import Lab, StateStore, down, exercise, require_root, up


@click.group()
def command() -> None:
    """A Calico VXLAN cluster (worker1 + worker2, pods curl and httpbin) in network namespaces."""


@command.command("up")
@click.option("--nodes", "nodes", type=int, default=2, show_default=True,
              help="Number of nodes; each node after worker2 gets a pod podN serving httpbin.")
def up_cmd(nodes: int) -> None:
    """Build the lab (needs root); fails cleanly, leaving nothing behind."""
    topology = exercise(nodes)
    err = Console(stderr=True)
    start = time.monotonic()
    with err.status("building the lab") as status:
        lab = up(topology, progress=lambda msg: status.update(msg))
    err.print(f"lab up in {time.monotonic() - start:.1f} s (prefix {escape(lab.state.prefix)})")
    _print_status(lab, _stdout())


@command.command("down")
def down_cmd() -> None:
    """Remove every namespace and process the lab made; nothing else."""
    store = StateStore.from_env()
    state = down(store)
    if state is None:
        click.echo(f"no lab is up (prefix {store.prefix!r}); nothing to remove")
    else:
        n, p = len(state.namespaces), len(state.processes)
        click.echo(f"lab down: removed {n} namespace{'s' * (n != 1)} and {p} process{'es' * (p != 1)}")


@command.command("status")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_cmd(output: str) -> None:
    """Nodes, pods, IPs, host veths and MACs of the running lab."""
    store = StateStore.from_env()
    if store.load() is None:
        if output == "json":
            click.echo(json.dumps({"schema": "tracer.lab/v1", "up": False, "prefix": store.prefix}))
        else:
            click.echo(f"no lab is up (prefix {store.prefix!r}); start one with: tracer lab up")
        return
    lab = Lab.load(store)
    if output == "json":
        click.echo(json.dumps(lab.to_dict(), indent=2))
    else:
        _print_status(lab, _stdout())


@command.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("target")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(target: str, argv: tuple[str, ...]) -> int:
    """Run a command in a pod's or node's namespace: tracer lab exec curl -- ip route."""
    require_root("lab exec")
    if argv[:1] == ("--",):
        argv = argv[1:]
    if not argv:
        raise click.UsageError("no command given: tracer lab exec POD|NODE -- CMD...")
    lab = Lab.load()
    try:
        return subprocess.run(lab.argv(target, argv)).returncode
    except KeyboardInterrupt:
        return 130


def _stdout() -> Console:
    # Piped output is read by people and greps alike: do not cut MACs to fit 80 columns.
    out = Console(highlight=False)
    return out if out.is_terminal else Console(highlight=False, width=200)


def _print_status(lab: Lab, out: Console) -> None:
    topo = lab.topology
    if not lab.state.complete:
        out.print("[yellow]this lab was not completed (up failed or was interrupted): run tracer lab down[/]")
    nodes = Table(title=f"nodes ({topo.cni}, VNI {topo.vni}, UDP {topo.udp_port}, MTU {topo.mtu})")
    for col in ("node", "netns", "underlay", "NIC MAC", "block", "tunnel IP", "vxlan MAC"):
        nodes.add_column(col, overflow="fold")
    for n in lab.nodes:
        nodes.add_row(n.name, n.netns, f"{n.underlay_nic} {n.underlay_ip}", n.underlay_mac, n.block,
                      f"{n.tunnel_device} {n.tunnel_ip}", n.tunnel_mac)
    pods = Table(title="pods")
    for col in ("pod", "node", "IP", "eth0 MAC", "host veth", "veth MAC", "netns", "app"):
        pods.add_column(col, overflow="fold")
    for p in lab.pods:
        pods.add_row(p.name, p.node, p.ip, p.mac, p.host_veth, p.host_veth_mac, p.netns, p.app)
    out.print(nodes, pods)
