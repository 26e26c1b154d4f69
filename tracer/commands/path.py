"""`tracer path SRC DST`: the expected way of a request between two pods, hop by hop."""

from __future__ import annotations

import json

import click
from rich.console import Console

from tracer.commands.follow import backend_options, choose_backend
from tracer.cluster.discover import discover
from tracer.model import Way
from tracer.render.path import render_way


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the points in order (node/interface, role, MAC, ifindex), as follow captures them.")
@backend_options
def command(src: str, dst: str, output: str, backend, kubeconfig, context, namespace, capture_image,
            capture_namespace) -> None:
    """Print the capture points a request from pod SRC to pod DST passes, in order.

    The exercise's steps 3.1-3.4 (the pod's route, eth0@ifN, proxy-ARP, the cali veth) and
    step 4 (the other node), read from the live state: on the lab, or on Kubernetes through
    a short-lived capture pod per node (hostNetwork, to read the node's routes, neighbours
    and FDB; deleted afterwards).

    \b
    Examples:
      tracer path curl httpbin
      tracer path curl httpbin -o json > path.json     # names tcpdump -i any points (analyze --path-file)
      tracer path curl httpbin --kubeconfig ~/.kube/config -n default
    """
    if choose_backend(backend, kubeconfig, context, capture_image, capture_namespace) == "lab":
        from tracer.cluster.lab import Lab, require_root

        require_root("path")  # reading other namespaces needs root
        way = discover(Lab.load().backend(), src, dst)
    else:
        way = _discover_on_kubernetes(src, dst, kubeconfig=kubeconfig, context=context, namespace=namespace,
                                      capture_image=capture_image, capture_namespace=capture_namespace)
    if output == "json":
        click.echo(json.dumps(way.to_dict(), indent=2))
    else:
        render_way(way, Console(highlight=False, soft_wrap=True))


def _discover_on_kubernetes(src: str, dst: str, **options) -> Way:
    from tracer.cluster.k8s.backend import make_backend
    from tracer.app.signals import sigterm_interrupts, uninterrupted

    with sigterm_interrupts():
        backend = make_backend(**options)
        try:
            return discover(backend, src, dst)
        finally:
            with uninterrupted():
                backend.close()  # deletes the capture pods discovery read the nodes through
