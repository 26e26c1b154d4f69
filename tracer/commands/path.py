"""`tracer path SRC DST`: the expected way of a request between two pods, hop by hop."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.markup import escape

from tracer.commands.follow import backend_options, choose_backend
from tracer.cluster.discover import discover
from tracer.model import Way


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
        render(way, Console(highlight=False, soft_wrap=True))


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


def render(way: Way, out: Console) -> None:
    """The way in the exercise's terms: steps 3.1-3.4 on the source node, step 4 on the other."""
    s, d = way.src, way.dst
    e = escape
    out.print(f"[bold]Way of a request {e(s.pod.name)} ({s.pod.ip}, {e(s.pod.node)}) -> "
              f"{e(d.pod.name)} ({d.pod.ip}, {e(d.pod.node)})[/]")
    out.print(f"\n[bold]Steps 3.1-3.4 on {e(s.pod.node)}[/] (pod {e(s.pod.name)})")
    out.print(f"  3.1 ip route get {d.pod.ip}: {e(s.route)}")
    out.print(f"  3.2 eth0@if{s.iflink}: the veth's other end is ifindex {s.host_veth_ifindex} on "
              f"{e(s.pod.node)}, {e(s.host_veth)} (proxy_arp={s.proxy_arp}, proxy_delay={s.proxy_delay})")
    arp = f"{s.gateway} at {s.gateway_mac}" if s.gateway_mac else f"{s.gateway} not resolved yet"
    out.print(f"  3.3 ARP: {arp}; the pod's own eth0 MAC is {s.mac}")
    out.print(f"  3.4 {s.host_veth_mac} is {e(s.host_veth)}'s MAC: proxy-ARP makes the host end of the "
              "veth pair the next hop")
    if way.tunnel:
        t = way.tunnel
        out.print(f"      {e(s.pod.node)} routes {e(t.route)}; neighbour {t.dst_tunnel_ip} lladdr "
                  f"{t.dst_mac}; fdb {t.dst_mac} dst {t.dst_node_ip} (VNI {t.vni}, UDP {t.udp_port})")
        out.print(f"\n[bold]Step 4 on {e(d.pod.node)}[/] (pod {e(d.pod.name)})")
        out.print(f"      the VXLAN packet arrives on {e(t.underlay_dst)} ({t.dst_node_ip}), is decapsulated "
                  f"on {e(t.device)}, and {e(d.pod.node)} routes {e(d.node_route)}")
    else:
        out.print(f"\n[bold]Both pods run on {e(s.pod.node)}[/]: no tunnel, the way is the two veths only.")
    out.print(f"      {e(d.host_veth)} (ifindex {d.host_veth_ifindex}) is the peer of {e(d.pod.name)}'s "
              f"eth0@if{d.iflink}, MAC {d.mac}")

    out.print("\n[bold]Capture points of the request[/] (the reply takes the mirror way)")
    for i, p in enumerate(way.points, 1):
        out.print(f"  [bold]{i}[/] {e(p.id):<26} {p.role:<9} {p.direction:<8} MAC {p.mac}   "
                  f"frame {p.eth_src} -> {p.eth_dst}")
        out.print(f"      {e(p.explanation)}")
    for w in way.warnings:
        out.print(f"[yellow]warning:[/] {e(w)}")
