"""The analysis use case shared by `tracer analyze` and `tracer follow`: captures in, views out."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


from tracer.correlate.engine import CaptureInput, Correlator, Options, inputs_from_paths, no_cyclic_gc, total_size
from tracer.decode import VXLAN_PORTS
from tracer.errors import NotFoundError
from tracer.render.jsondoc import dumps
from tracer.model import Flow, Trace
from tracer.correlate.describe import build_trace

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
    names: dict[str, str] | None = None
    """IP -> pod name, shown next to addresses."""
    window: float = 10.0
    ifnames: dict[tuple[str, int], str] | None = None
    """(node, interface index) -> name, for tcpdump -i any captures."""
    captured_together: bool = False
    """Every capture ran over the whole exchange (tracer follow's agents): a packet a point
    did not see was not there, whenever the point's first and last frames came."""
    jobs: int | None = None
    """Processes reading capture files at once (Options.jobs)."""
    strict_flows: bool = False
    """--flow that matches no flow is an error (tracer analyze; follow shows what it has)."""
    progress: Callable[[float | None], None] | None = None
    """Told the share of the captures read so far while reading, then None (see ReadingProgress)."""


def correlate(req: AnalyzeRequest) -> tuple[Trace, Correlator]:
    inputs = list(req.inputs) + inputs_from_paths(req.paths, req.points)
    keep = bool(req.pcapng) or not (req.summary or _big(req, inputs))  # (a merged pcapng comments every packet)
    opts = Options(vxlan_ports=VXLAN_PORTS | frozenset(req.vxlan_ports), window=req.window, keep_packets=keep,
                   way_hint=req.way, pods=frozenset((req.names or {}).values()), ifnames=dict(req.ifnames or {}),
                   captured_together=req.captured_together, jobs=req.jobs)
    c = Correlator(inputs, opts, req.progress).run()
    return build_trace(c), c


def _big(req: AnalyzeRequest, inputs: list[CaptureInput]) -> bool:
    """Whether the text view will be the summary anyway: big captures, no flows chosen, no
    merged pcapng (which comments every packet's hops)."""
    if req.output != "text" or req.flows or req.pcapng:
        return False
    return total_size(i.path for i in inputs) >= AUTO_SUMMARY_BYTES


def select_flows(trace: Trace, specs: tuple[str, ...], all_flows: bool) -> list[Flow]:
    """--flow specs if given; else the HTTP flows and those with packets that stopped on the way
    (a flow whose SYN was dropped never shows HTTP); else every flow."""
    flows = list(trace.flows)
    if specs:
        return [f for i, f in enumerate(flows, 1) if any(_matches(f, i, s) for s in specs)]
    if all_flows:
        return flows
    chosen = [f for f in flows if f.http or (f.summary is not None and f.summary.stopped)]
    return chosen or flows


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


def run_analysis(req: AnalyzeRequest, out: TextIO = sys.stdout, extra_json: dict | None = None,
                 header=None) -> Trace:
    with no_cyclic_gc():  # (the model and the document too)
        return _run_analysis(req, out, extra_json, header)


def _run_analysis(req: AnalyzeRequest, out: TextIO, extra_json: dict | None, header) -> Trace:
    done = req.progress or (lambda share: None)  # (called with None: the progress line wiped)
    try:
        return _show(req, out, extra_json, header, done)
    finally:
        done(None)


def _show(req: AnalyzeRequest, out: TextIO, extra_json: dict | None, header, done: Callable[[None], None]) -> Trace:
    trace, c = correlate(req)
    shown = select_flows(trace, req.flows, req.all_flows)
    if req.flows and not shown and trace.flows and req.output == "text" and req.strict_flows:
        n = len(trace.flows)
        raise NotFoundError(f"no flow matches --flow {' '.join(req.flows)}: the captures hold {n:,} flow{'s' if n != 1 else ''}",
                            "--summary lists them with their numbers; --flow takes a number, an IP, IP:PORT or a port")
    if req.pcapng:
        n = write_pcapng(c, trace, req.pcapng)
        done(None)
        k = len(trace.points)
        print(f"tracer: wrote {req.pcapng}: {n:,} frame{'s' if n != 1 else ''} of {k} point{'s' if k != 1 else ''}, "
              "the point as the frame's "
              "interface, its hop as its comment (columns frame.interface_name and frame.comment)", file=sys.stderr)
    if req.output == "json":
        if req.flows:
            trace = _with_flows(trace, shown)
        text = dumps(trace, summary=req.summary, extra=extra_json)
        done(None)
        out.write(text + "\n")
        return trace
    from rich.console import Console  # (not needed for --output json)

    done(None)
    console = Console(file=out, highlight=False, soft_wrap=False, width=_width(out))
    if header is not None:
        from rich.console import Group
        from rich.text import Text
        for part in header.renderables if isinstance(header, Group) else [header]:
            # a line marked not to be wrapped (one with a path to copy) is left whole to the terminal
            console.print(part, soft_wrap=isinstance(part, Text) and bool(part.no_wrap))
    if len(shown) < len(trace.flows):
        ids = {id(f) for f in shown}
        hidden = [f for f in trace.flows if id(f) not in ids]
        n = sum(f.summary.packets if f.summary else len(f.packets) for f in hidden)
        # (tracer follow's own --flow is its run's connections: --all-flows shows the others)
        by_user = req.flows and req.strict_flows
        why = " not matching --flow" if by_user else ("" if req.flows else ", neither HTTP nor with packets that stopped,")
        how = "" if by_user else " (--all-flows)"
        console.print(f"{len(hidden):,} other flow{'s' if len(hidden) != 1 else ''} ({n:,} packets){why} in the "
                      f"captures not shown{how}", style="dim")
    from tracer.render import hops as render
    n = sum(f.summary.packets if f.summary and not f.packets else len(f.packets) for f in shown)
    if req.summary or not c.opts.keep_packets or n > AUTO_SUMMARY_PACKETS:
        if not req.summary:
            why = "" if c.opts.keep_packets else f"{c.total_frames:,} frames in the captures, "
            console.print(f"{why}{n:,} packets in the selected flows: showing the summary (--flow N for one flow's hops)",
                          style="dim")
        render.render_summary(trace, console, shown)
    else:
        render.render_hops(trace, console, shown, req.names or {})
    return trace


class ReadingProgress:
    """`reading captures: 42% (3 s)` on a terminal, from DELAY seconds on, updated in place;
    once everything is read (share 1), what comes next, its seconds ticking; wiped when the
    result is about to be shown (called with None). Nothing it writes can fail the analysis."""

    DELAY = 1.0
    TICK = 0.5  # seconds between redraws after reading, while nothing else calls

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.start = time.monotonic()
        self.shown = ""  # what the line says now
        self.lock = threading.Lock()
        self.ticker: threading.Thread | None = None
        self.stop = threading.Event()

    def __call__(self, share: float | None) -> None:
        if share is None:
            if self.ticker is not None:
                self.stop.set()
                self.ticker.join()
                self.ticker = None
            self._write("")
            return
        self._draw(share)
        if share >= 1.0 and self.ticker is None:
            self.ticker = threading.Thread(target=self._tick, name="tracer-progress", daemon=True)
            self.ticker.start()

    def _tick(self) -> None:
        while not self.stop.wait(self.TICK):
            self._draw(1.0)

    def _draw(self, share: float) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed >= self.DELAY:
            what = f"reading captures: {int(share * 100):3d}%" if share < 1.0 else "captures read, working out the flows"
            self._write(f"{what} ({elapsed:.0f} s)")

    def _write(self, text: str) -> None:
        with self.lock:
            if text == self.shown:
                return
            try:
                self.stream.write("\r\x1b[K" + text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # (a terminal gone: the analysis goes on)
            self.shown = text


def _with_flows(trace: Trace, flows: list[Flow]) -> Trace:
    from dataclasses import replace
    return replace(trace, flows=tuple(flows))


def _width(out: TextIO) -> int | None:
    return None if getattr(out, "isatty", lambda: False)() else 200


def write_pcapng(c: Correlator, trace: Trace, path: str) -> int:
    """Every sighting of every kept packet, commented `flow F packet P hop H/N ...`; how many."""
    from tracer.render.pcapng import PcapngWriter
    w = PcapngWriter(path)
    n = 0
    for fi, f in enumerate(c.flows(), 1):  # numbered as in trace.flows
        for pi, seq in enumerate(f.records, 1):
            what = trace.flows[fi - 1].packets[pi - 1].headline
            for hi, s in enumerate(seq, 1):
                fr = s.frame
                note = ""
                if fr.tunnels:
                    t = fr.tunnels[-1]
                    note = f" encapsulated {t.type.upper()}" + (f" VNI {t.vni}" if t.vni is not None else "")
                point = c.points[s.point].id
                w.add(point, fr.linktype, s.time, fr.data, fr.orig_len,
                      f"flow {fi} packet {pi} hop {hi}/{len(seq)} {what}{note}", s.direction)
                n += 1
    w.close()
    return n
