"""`tracer path SRC DST`: the expected way of a request between two pods, hop by hop."""

from __future__ import annotations

import json

import click

from tracer.app.backend import BackendOptions
from tracer.commands.options import backend_options, point_option


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the points in order (node/interface, role, MAC, ifindex), as follow captures them.")
@point_option
@backend_options
def command(src: str, dst: str, output: str, points: tuple[str, ...], backend: BackendOptions) -> None:
    """Print the capture points a request from pod SRC to pod DST passes, in order.

    The exercise's steps 3.1-3.4 (the pod's route, eth0@ifN, proxy-ARP, the cali veth) and
    step 4 (the other node), read from the live state: on the lab, or on Kubernetes through
    a short-lived capture pod per node (hostNetwork, to read the node's routes, neighbours
    and FDB; deleted afterwards).

    DST may be a Service too (`svc/NAME`, its ClusterIP, or a URL): the way to its endpoint, with
    the kube-proxy rule that DNATs it there.

    \b
    Examples:
      tracer path curl httpbin
      tracer path curl svc/httpbin
      tracer path curl httpbin -o json > path.json     # names tcpdump -i any points (analyze --path-file)
      tracer path curl httpbin --kubeconfig ~/.kube/config -n default
    """
    from tracer.app.path import find_request
    from tracer.app.target import dns_document, endpoint_documents

    request = find_request(src, dst, backend, points)
    way = request.way
    if output == "json":
        click.echo(json.dumps({**way.to_dict(), **({"dns": dns_document(request.dns)} if request.dns else {}),
                               **({"endpoints": endpoint_documents(request.others)} if request.others else {})},
                              indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        from tracer.render.path import render_dns, render_way

        console = Console(highlight=False, soft_wrap=True)
        if request.dns is not None:
            render_dns(request.dns.way, request.dns.service, console)
        render_way(way, console)
        for other in request.others:
            console.print(f"\n[bold]Or to endpoint {escape(other.dst.pod.name)}[/] ({other.dst.pod.ip}, "
                          f"{escape(other.dst.pod.node)}): kube-proxy picks one endpoint per connection; this way's "
                          "points: " + " -> ".join(escape(p.id) for p in other.points))
