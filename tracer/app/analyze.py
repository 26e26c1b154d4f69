"""The analysis use case shared by `tracer analyze` and `tracer follow`: captures in, an Analysis out.

It reads and correlates the captures (tracer.correlate), describes them as the model, picks the
flows to show and whether the view is the summary; it prints nothing (tracer.render.analysis
shows an Analysis).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from tracer.capture.inputs import CaptureInput, inputs_from_paths, total_size
from tracer.correlate.changes import packet_summary
from tracer.correlate.describe import build_trace
from tracer.correlate.engine import CorrelationOptions, Correlator, no_cyclic_gc
from tracer.correlate.result import Correlation
from tracer.decode import VXLAN_PORTS
from tracer.errors import NotFoundError, UsageError
from tracer.model import Flow, Trace
from tracer.model.analysis import Analysis
from tracer.model.trace import OtherFrame, RawFrame

__all__ = ["AnalyzeRequest", "Analysis", "analyze", "correlate", "find_path_file", "no_cyclic_gc", "read_path_file",
           "select_flows", "PathHint"]

AUTO_SUMMARY_PACKETS = 400  # more packets than this in the shown flows: the summary view
AUTO_SUMMARY_BYTES = 16 << 20
"""Captures this big (together) shown without --flow: the summary view, worked out as --summary
does from the start (keeping every packet's hops of ~100,000 frames takes ~200 MB and a decode
of every frame in full, only to show the summary in the end)."""


@dataclass(frozen=True, kw_only=True)
class AnalyzeRequest:
    paths: tuple[str, ...] = ()
    points: tuple[str, ...] = ()
    inputs: tuple[CaptureInput, ...] = ()
    """Already resolved inputs (follow passes these); added to those from paths and points."""
    vxlan_ports: tuple[int, ...] = ()
    flows: tuple[str, ...] = ()
    all_flows: bool = False
    summary: bool = False
    output: str = "text"
    pcapng: str | None = None
    way: tuple[str, ...] = ()
    other_ways: tuple[tuple[str, ...], ...] = ()
    """More expected ways (path.json's `dns`: the DNS query's), each flow taking the one it fits."""
    way_ends: tuple[str, ...] = ()
    """The IP each expected way goes to (`way`'s, then `other_ways`'), as CorrelationOptions.way_ends."""
    blind: tuple[str, ...] = ()
    """Points of the way its data path may carry packets past unseen (path.json's `bypass`)."""
    names: dict[str, str] | None = None
    """IP -> pod name, shown next to addresses."""
    window: float = 10.0
    ifnames: dict[tuple[str, int], str] | None = None
    """(node, interface index) -> name, for tcpdump -i any captures."""
    captured_together: bool = False
    """Every capture ran over the whole exchange (tracer follow's agents): a packet a point
    did not see was not there, whenever the point's first and last frames came."""
    jobs: int | None = None
    """Processes reading capture files at once (CorrelationOptions.jobs)."""
    offloads: dict[str, dict[str, str]] | None = None
    """Point -> its offloads as the capture agent read them: the views name them."""
    view: str | None = None
    """The text view asked for: hops, grid or summary (None: hops, or the summary for many packets);
    the caller sets `summary` too for summary."""
    related_arp: bool = False
    """Show the ARP exchanges of the chosen flows' addresses beside them (follow's own flows)."""
    strict_flows: bool = False
    """--flow that matches no flow is an error (tracer analyze; follow shows what it has)."""
    progress: Callable[[float | None], None] | None = None
    """Told the share of the captures read so far while reading, then None (see render.progress)."""


def analyze(req: AnalyzeRequest) -> Analysis:
    """Read, correlate and describe the captures; choose what to show."""
    trace, c = correlate(req)
    shown = select_flows(trace, req.flows, req.all_flows, related_arp=req.related_arp)
    if req.flows and not shown and trace.flows and req.output == "text" and req.strict_flows:
        n = len(trace.flows)
        raise NotFoundError(f"no flow matches --flow {' '.join(req.flows)}: the captures hold {n:,} flow{'s' if n != 1 else ''}",
                            "--summary lists them with their numbers; --flow takes a number, an IP, IP:PORT or a port")
    keep = c.options.keep_packets
    n = sum(f.summary.packets if f.summary and not f.packets else len(f.packets) for f in shown)
    return Analysis(trace=trace, shown=tuple(shown), chosen_by_flow=bool(req.flows), strict_flows=req.strict_flows,
                    kept_packets=keep,
                    summary_view=req.summary or not keep or (n > AUTO_SUMMARY_PACKETS and not req.view),
                    shown_packets=n, names=dict(req.names or {}), frames=raw_frames(c) if req.pcapng else None,
                    other_frames=other_frames(c) if req.pcapng else ())


def correlate(req: AnalyzeRequest) -> tuple[Trace, Correlation]:
    """The model of the captures, and the correlation it was described from."""
    inputs = list(req.inputs) + inputs_from_paths(req.paths, req.points)
    keep = bool(req.pcapng) or not (req.summary or _big(req, inputs))  # (a merged pcapng comments every packet)
    opts = CorrelationOptions(vxlan_ports=VXLAN_PORTS | frozenset(req.vxlan_ports), window=req.window,
                              keep_packets=keep, way_hint=req.way, other_ways=req.other_ways, way_ends=req.way_ends,
                              blind_points=frozenset(req.blind),
                              pods=frozenset((req.names or {}).values()),
                              ifnames=dict(req.ifnames or {}), captured_together=req.captured_together, jobs=req.jobs,
                              offloads=dict(req.offloads or {}))
    c = Correlator(inputs, opts, req.progress).run()
    return build_trace(c), c


def raw_frames(c: Correlation) -> tuple[tuple[tuple[RawFrame, ...], ...], ...]:
    """Every kept packet's frames as captured, in the order of trace.flows, packets and hops."""
    return tuple(tuple(tuple(RawFrame(linktype=s.frame.linktype, data=s.frame.data, orig_len=s.frame.orig_len,
                                      summary=packet_summary(s.frame))
                             for s in seq) for seq in f.records) for f in c.flows)


def other_frames(c: Correlation) -> tuple[OtherFrame, ...]:
    """The frames no flow holds, with why (what the decoder said of them)."""
    return tuple(OtherFrame(point=c.points[p].id, time=t, why=fr.undecoded or "not an IP or ARP packet",
                            frame=RawFrame(linktype=fr.linktype, data=fr.data, orig_len=fr.orig_len))
                 for p, t, fr in c.unfollowed)


def _big(req: AnalyzeRequest, inputs: list[CaptureInput]) -> bool:
    """Whether the text view will be the summary anyway: big captures, no flows chosen, no
    merged pcapng (which comments every packet's hops)."""
    if req.output != "text" or req.flows or req.pcapng or req.view in ("hops", "grid"):
        return False
    return total_size(i.path for i in inputs) >= AUTO_SUMMARY_BYTES


def select_flows(trace: Trace, specs: tuple[str, ...], all_flows: bool, related_arp: bool = False) -> list[Flow]:
    """--flow specs if given; else the HTTP flows and those with packets that stopped on the way
    (a flow whose SYN was dropped never shows HTTP); else every flow. Chosen so (or with
    `related_arp`), the ARP exchanges of the chosen flows' addresses are shown too: step 3.3 of
    their way (the pod resolving its gateway, the node resolving the pod), the ICMP to and
    from them (a node's "fragmentation needed" to a pod that sent more than the way takes), and
    the DNS lookups their clients made (the name a URL asked for)."""
    flows = list(trace.flows)
    if specs:
        chosen = [f for i, f in enumerate(flows, 1) if any(_matches(f, i, s) for s in specs)]
    elif all_flows:
        return flows
    else:
        chosen = [f for f in flows if f.http or (f.summary is not None and f.summary.stopped)]
        if not chosen:
            return flows
        related_arp = True
    if not related_arp:
        return chosen
    ips = {_ip(a) for f in chosen for a in (f.client, f.server, *((f.nat.original, f.nat.translated) if f.nat else ()))}
    keep = {id(f) for f in chosen} | {id(f) for f in flows if f.protocol in ("arp", "icmp") and (f.client in ips or f.server in ips)}
    keep |= {id(f) for f in flows if f.packets and f.packets[0].dns is not None and _ip(f.client) in ips}
    return [f for f in flows if id(f) in keep]  # (in their numbers' order)


def _ip(addr: str) -> str:
    """`10.1.2.3:80` -> `10.1.2.3`; `[fd00::1]:80` -> `fd00::1`; an address without port as it is."""
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def _matches(f: Flow, index: int, spec: str) -> bool:
    spec = spec.strip()
    if spec.startswith("#") and spec[1:].isdigit():  # a flow's number, however big
        return int(spec[1:]) == index
    if spec.isdigit() and int(spec) == index and len(spec) < 4:  # (4 digits and more: a port)
        return True
    addrs = [f.client, f.server] + ([f.nat.original, f.nat.translated] if f.nat else [])
    for a in addrs:
        ip, _, port = a.rpartition(":") if a.count(":") == 1 else (a, "", "")
        if spec in (a, ip, port):
            return True
    return spec == f.protocol


# ---- the expected way and interface names, from the command line ----

def find_path_file(paths: Iterable[str]) -> str | None:
    """The path.json of the first directory among `paths` that holds one (as follow --save writes it)."""
    for p in paths:
        if os.path.isdir(p) and os.path.isfile(os.path.join(p, "path.json")):
            return os.path.join(p, "path.json")
    return None


class PathHint(NamedTuple):
    """What a tracer.path/v1 document tells the analysis (read_path_file)."""

    way: tuple[str, ...]
    names: dict[str, str]
    ifnames: dict[tuple[str, int], str]
    captured_together: bool
    blind: tuple[str, ...] = ()
    offloads: dict[str, dict[str, str]] = {}
    """Point -> its offloads as the capture agent read them (follow --save writes them)."""
    other_ways: tuple[tuple[str, ...], ...] = ()
    """More expected ways: the DNS query's (`dns`), with its pod ends."""
    way_ends: tuple[str, ...] = ()
    """The IP each expected way goes to (the way's, then other_ways')."""


def read_path_file(path: str) -> PathHint:
    """The request's way, the pods' names, the way's interfaces by (node, index) from a
    `tracer path --output json` document, whether it says its captures ran over the whole
    exchange (`tracer follow --save` writes it so: its agents all listen before curl and until
    the end), and the points its data path may bypass."""
    try:
        with open(path) as f:
            doc = json.load(f)
        way = tuple(p["id"] for p in doc.get("points", []))
        ifnames = {(str(p["node"]), int(p["ifindex"])): str(p["interface"])
                   for p in doc.get("points", []) if p.get("ifindex") is not None}
        blind = tuple(p["id"] for p in doc.get("points", []) if p.get("bypass"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{path}: not a tracer path document ({e})", "write it with: tracer path SRC DST --output json") from None
    names = {}
    for side in ("src", "dst"):
        d = doc.get(side) or {}
        if isinstance(d, dict) and d.get("ip") and d.get("name"):
            names[str(d["ip"])] = str(d["name"])
    # The pods' own eth0, where captured, are the two ends of the way.
    src, dst = (doc.get(side) or {} for side in ("src", "dst"))
    if isinstance(src, dict) and src.get("name"):
        way = (f"{src['name']}/eth0",) + way
    if isinstance(dst, dict) and dst.get("name"):
        way = way + (f"{dst['name']}/eth0",)
    offloads = doc.get("offloads")
    offloads = {str(p): {str(k): str(v) for k, v in o.items()} for p, o in offloads.items()
                if isinstance(o, dict)} if isinstance(offloads, dict) else {}
    other: list[tuple[str, ...]] = []
    ends_ips = [str((doc.get("dst") or {}).get("ip") or "")] if isinstance(doc.get("dst"), dict) else [""]
    dns = doc.get("dns") if isinstance(doc.get("dns"), dict) else {}
    for more in [*(doc.get("endpoints") or []), dns, *(dns.get("others") or [])]:  # (the other endpoints', the DNS pods')
        if not isinstance(more, dict) or not isinstance(more.get("points"), list):
            continue
        try:
            w = tuple(str(p["id"]) for p in more["points"])
            ends = [(more.get(side) or {}) for side in ("src", "dst")]
            if ends[0].get("name"):
                w = (f"{ends[0]['name']}/eth0",) + w
            if ends[1].get("name"):
                w = w + (f"{ends[1]['name']}/eth0",)
                if ends[1].get("ip"):
                    names[str(ends[1]["ip"])] = str(ends[1]["name"])
            other.append(w)
            ends_ips.append(str(ends[1].get("ip") or ""))
        except (KeyError, TypeError, AttributeError):
            continue
    return PathHint(way, names, ifnames, doc.get("captured_together") is True, blind, offloads, tuple(other),
                    tuple(ends_ips) if other else ())
