"""`tracer analyze`: the hop-by-hop view from saved captures."""

from __future__ import annotations

import os
import sys

import click

from tracer.app.analyze import AnalyzeRequest, analyze, find_path_file, no_cyclic_gc, read_path_file
from tracer.render.analysis import show
from tracer.render.outputs import OUTPUTS, VIEWS
from tracer.render.progress import ReadingProgress
from tracer.errors import UsageError


@click.command("analyze")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--point", "points", multiple=True, metavar="NAME=FILE",
              help="Read FILE as capture point NAME (node/interface); overrides names from paths.")
@click.option("--vxlan-port", "vxlan_ports", multiple=True, type=click.IntRange(1, 65535), metavar="PORT",
              help="Also decode UDP PORT as VXLAN (4789 and 8472 always are).")
@click.option("--flow", "flows", multiple=True, metavar="SPEC",
              help="Show only flows matching SPEC: an IP, IP:PORT, a port, a flow number (#1501; up to 999 "
                   "also without #). Repeatable.")
@click.option("--all-flows", is_flag=True, help="Show every flow, not only the HTTP ones and those that lost packets.")
@click.option("--summary", is_flag=True, help="Flows, packets per point, loss and latency per segment, no hops.")
@click.option("--view", type=click.Choice(VIEWS), default=None,
              help="The text view: hops (a table per packet), grid (a row per packet, a column per point, a mark "
                   "per hop: for a class), summary (= --summary). Default: the grid, the summary for many packets.")
@click.option("--output", "-o", type=click.Choice(list(OUTPUTS)), default="text", show_default=True,
              help="json: the tracer.trace/v1 document on stdout.")
@click.option("--pcapng", "pcapng", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write one merged pcapng, an interface per point, each frame commented with its hop.")
@click.option("--path-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="The expected way (tracer path --output json); found as path.json in a directory by itself.")
@click.option("--ifname", "ifnames", multiple=True, metavar="NODE/INDEX=NAME",
              help="Name interface INDEX of NODE in a tcpdump -i any capture (else if<INDEX>; "
                   "--path-file names the way's own). Repeatable.")
@click.option("--window", type=click.FloatRange(0.01), default=10.0, show_default=True, metavar="SECONDS",
              help="How long a packet waits for its sightings at other points; raise it if node clocks differ more.")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None, metavar="N",
              help="Processes reading capture files at once, this one included; 1: all in this one. Default: "
                   "for the summary, each file of 4 MiB or more of Ethernet frames (pcap, or pcapng of one "
                   "interface) in a process of its own when there is more than one CPU.")
def command(paths, points, vxlan_ports, flows, all_flows, summary, view, output, pcapng, path_file, ifnames, window, jobs):
    """Follow each packet across saved captures, offline.

    PATHS are capture files (pcap or pcapng) or directories laid out as
    <node>/<interface>.pcap, as `tracer follow --save` writes them. A file's point is named
    after its directory and its name (worker1/eth1.pcap is point worker1/eth1); a pcapng
    interface named node/interface is that point.

    A `tcpdump -i any` capture holds every interface of a node: name it <node>.pcap or
    <node>/any.pcap and each interface in it is a point of its own, <node>/<interface>
    (named by --path-file or --ifname, else if<index>).

    The view is a grid of the packets (a row each, a mark at every point of the way; --view
    hops: a table of each packet's hops) of the HTTP flows and those with packets that stopped
    on the way, with the ARP exchanges of their addresses (or those --flow chooses, or
    --all-flows); flows are numbered as --flow takes them: HTTP flows in request order.
    It is the summary (flows, loss and latency per segment) when there are more than 400 such
    packets, or when the captures add up to 16 MiB or more and neither --flow nor --pcapng is
    given. On a terminal, a line on stderr tells how far the reading of big captures has got.

    \b
    Examples:
      tracer analyze pcaps/http-get
      tracer analyze worker1/eth1.pcap worker2/eth1.pcap --all-flows
      tracer analyze capture-dir --summary --output json
      tracer analyze capture-dir --pcapng merged.pcapng && wireshark merged.pcapng
      tracer analyze worker1.pcap worker2.pcap --path-file path.json   # tcpdump -i any on each node
    """
    if not paths and not points:
        raise UsageError("no captures given", "pass capture files or a directory, e.g.: tracer analyze pcaps/http-get")
    summary = summary or view == "summary"
    path_file = path_file or find_path_file(paths)
    hint = read_path_file(path_file) if path_file else None
    named = dict(hint.ifnames) if hint else {}
    named.update(parse_ifnames(ifnames))
    progress = ReadingProgress(sys.stderr) if _terminal(sys.stderr) else None
    req = AnalyzeRequest(paths=tuple(paths), points=tuple(points), vxlan_ports=tuple(vxlan_ports), flows=tuple(flows),
                         all_flows=all_flows, summary=summary, output=output, pcapng=pcapng,
                         way=hint.way if hint else (), blind=hint.blind if hint else (),
                         names=hint.names if hint else {}, window=window, ifnames=named,
                         captured_together=bool(hint and hint.captured_together), jobs=jobs, strict_flows=True, view=view,
                         offloads=hint.offloads if hint else {}, other_ways=hint.other_ways if hint else (), way_ends=hint.way_ends if hint else (),
                         progress=progress)
    done = progress or (lambda share: None)  # (called with None: the progress line wiped)
    with no_cyclic_gc():  # (the model and the document too)
        try:
            show(analyze(req), sys.stdout, output=output, summary=summary, pcapng=pcapng,
                 view=view, progress=done)
        finally:
            done(None)


def _terminal(stream) -> bool:
    """A terminal that can take a line redrawn in place."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def parse_ifnames(specs: tuple[str, ...]) -> dict[tuple[str, int], str]:
    out = {}
    for spec in specs:
        where, sep, name = spec.partition("=")
        node, slash, index = where.rpartition("/")
        if not (sep and slash and node and index.isdigit() and name and "/" not in name):
            raise UsageError(f"--ifname {spec!r}: expected NODE/INDEX=NAME", "e.g. --ifname worker1/3=cali35e3a5cb80b")
        out[(node, int(index))] = name
    return out
