"""`tracer agents install|uninstall|status`: warm capture agents, so a follow starts none."""

from __future__ import annotations

import functools

import click
from rich.console import Console

from tracer.app.backend import BACKENDS, BackendOptions


def _where(f):
    """The options that pick the cluster (as follow's, less those about pods and agents)."""
    @functools.wraps(f)
    def command(*args, backend, kubeconfig, context, capture_image, capture_namespace, **kwargs):
        options = BackendOptions(backend=backend, kubeconfig=kubeconfig, context=context,
                                 capture_image=capture_image, capture_namespace=capture_namespace)
        return f(*args, options=options, **kwargs)

    opts = [
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="The lab, or a cluster; picked as for follow (the lab when one is up, else the cluster "
                          "kubectl would use)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubernetes: the kubeconfig file."),
        click.option("--context", help="Kubernetes: the kubeconfig context."),
        click.option("--capture-image", metavar="IMAGE", help="Kubernetes: the agents' image (the capture image)."),
        click.option("--capture-namespace", metavar="NS", help="Kubernetes: the agents' namespace [tracer-capture]."),
        click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
                     help="json: a tracer.agents/v1 document (the nodes, each agent's pod or PID and state)."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), command)


_wait = click.option("--wait/--no-wait", default=True, show_default=True,
                     help="Wait until every Ready node's agent runs (or, uninstalling, until they are gone).")


@click.group()
def command() -> None:
    """Warm capture agents: one per node, running until uninstalled, so that follow, watch and
    path exec into them instead of starting a capture pod (and scapy) for every run.

    \b
    On Kubernetes a DaemonSet `tracer-agent` in the capture namespace (manifests/agents.yaml,
    the capture pods' security context, no deadline: a watch may run for hours). On the lab an
    agent server per node, which `lab up` starts already (lab up --no-agents does not).

    \b
    Examples:
      tracer agents install --capture-image localhost:32000/tracer-capture:0.1
      tracer agents status
      tracer follow curl httpbin --agents warm     # an error where a node has none
      tracer agents uninstall
    """


@command.command("install")
@_where
@_wait
def install_cmd(options: BackendOptions, output: str, wait: bool) -> None:
    """Start a warm capture agent on every node (Kubernetes: create or update the DaemonSet)."""
    from tracer.app.agents import install

    with Console(stderr=True).status("installing the capture agents") as spinner:
        view = install(options, wait=wait, progress=spinner.update)
    _show(view, output)


@command.command("uninstall")
@_where
@_wait
def uninstall_cmd(options: BackendOptions, output: str, wait: bool) -> None:
    """Remove the warm capture agents (Kubernetes: delete the DaemonSet and its pods)."""
    from tracer.app.agents import uninstall

    with Console(stderr=True).status("removing the capture agents") as spinner:
        view = uninstall(options, wait=wait, progress=spinner.update)
    _show(view, output)


@command.command("status")
@_where
def status_cmd(options: BackendOptions, output: str) -> None:
    """Each node's warm capture agent: where it runs and whether it is ready."""
    from tracer.app.agents import status

    _show(status(options), output)


def _show(view, output: str) -> None:
    from tracer.render.agents import agents_json, render_agents

    if output == "json":
        click.echo(agents_json(view))
    else:
        render_agents(view, Console(highlight=False))
