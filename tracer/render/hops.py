"""The hop view: each shown packet's hops as a table, flow by flow. Pure: it reads only the model."""

from __future__ import annotations

from collections.abc import Callable

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Span, Text

from tracer.model import Flow, Hop, PacketTrace, Trace, duration
from tracer.render.text import flow_numbers, render_footer, render_no_flows, render_warnings, safe

CHANGE_STYLE = "bold yellow"
ENCAP_STYLE = "bold magenta"


def _label(addr: str, names: dict[str, str]) -> str:
    ip = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr
    name = names.get(ip)
    return f"{addr} ({name})" if name else addr


def _encap_text(h: Hop) -> Text:
    if h.encap is None:
        return Text("-", style="dim")
    e = h.encap
    vni = f" {e.vni}" if e.vni is not None else ""
    port = f":{e.udp_dport} " if e.udp_dport is not None else ""
    return Text(f"{e.type.upper()}{vni}\n{port}+{e.bytes_added}B", style=ENCAP_STYLE if "encap" in h.changes else "")


def _outer_lines(h: Hop, sep: str, encap: Text) -> Text:
    """The tunnel's own headers (what the underlay sees and routes), to go under the inner
    packet's addresses; each labelled in `encap`, on its line."""
    e = h.encap
    pairs = [("outer MAC", e.outer_eth_src, e.outer_eth_dst or "-")] if e.outer_eth_src else []
    pairs.append(("outer IP", e.outer_ip_src, e.outer_ip_dst))
    lines = sep.count("\n") + 1  # lines one address pair takes
    encap.append("\n" * (2 * lines - 2))  # (the encap text has two lines beside the inner pairs)
    t = Text()
    for label, a, b in pairs:
        t.append(f"\n{a}{sep}{b}", style=ENCAP_STYLE)
        encap.append(f"\n{label}" + "\n" * (lines - 1), style="dim")
    encap.rstrip()
    return t


NARROW = 100
"""Below this many columns the hop tables stack each address pair over two lines."""


def packet_table(p: PacketTrace, index: int, names: dict[str, str], narrow: bool = False,
                 way: tuple[str, ...] | None = None) -> Table:
    """One row per hop: addresses stacked (L2 over L3) so that a hop fits a projector's width;
    what changed is highlighted in the row and said in a numbered note under the table.
    `narrow` (a terminal under 100 columns): each source over its destination too, and each
    point's node over its interface (the row is as high anyway), long names folded, so that no
    column (TTL!) is cut."""
    arrow = "→" if p.direction == "request" else "←"
    title = Text(f"{arrow} packet {index}: ", style="bold")
    title.append(safe(p.headline))
    seen = len(p.hops)
    total = seen + len(p.missing)
    hidden = f", {len(p.not_visible)} not visible" if p.not_visible else ""
    title.append(f"  ({seen}/{total} points{hidden})", style="red" if p.stopped else ("yellow" if p.gaps else "green"))
    if p.hops and p.hops[0].ip_id is not None:
        title.append(f"  IP ID {p.ip_id}", style="dim")
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, expand=False,
              caption_justify="left", box=box.SIMPLE_HEAD)
    for col, kw in (("#", {"justify": "right"}), ("point", {}), ("dir", {}), ("+time\nbytes", {"justify": "right"}),
                    ("TTL", {"justify": "right"}), ("L2 src → dst\nL3 src → dst", {}), ("encap", {})):
        if narrow and col == "point":
            kw = {"overflow": "fold", "min_width": 12}
        t.add_column(col, no_wrap=not (narrow and col == "point"), **kw)
    sep = " →\n  " if narrow else " → "
    notes = Text()
    gaps_before = _rows_before(p, way or (), p.gaps)
    unseen_before = _rows_before(p, way or (), p.not_visible, last=len(p.hops) + 1)

    def not_visible_rows(i: int) -> None:
        for m in unseen_before.get(i, ()):
            t.add_row("◌", Text(_point_name(m, narrow), style="cyan"), "", "", "",
                      Text("not visible here (its data path may bypass it)", style="cyan"), "")

    explained = False  # (a super-frame is explained once per packet)
    for i, h in enumerate(p.hops, 1):
        not_visible_rows(i)
        for g in gaps_before.get(i, ()):
            t.add_row("·", Text(_point_name(g, narrow), style="yellow"), "", "", "",
                      Text("not captured here (seen before and after)", style="yellow"), "")
        ch = set(h.changes)
        addr = Text()  # (each line its own style: a Text's base style would colour the lines after it too)
        addr.append(f"{h.eth_src or '-'}{sep}{h.eth_dst or '-'}", style=CHANGE_STYLE if "mac" in ch else "")
        addr.append("\n")
        addr.append(f"{h.ip_src}{sep}{h.ip_dst}", style=CHANGE_STYLE if ch & {"dnat", "snat"} else "")
        encap = _encap_text(h)
        if h.encap is not None:
            addr.append_text(_outer_lines(h, sep, encap))
        # (the frame's length under its time: the row is two lines high anyway, and 80 columns are few)
        if h.carried is not None and h.carried.frames != 1:
            when = f"{duration(h.offset)}\n{h.carried.frames} frames"
        else:
            when = duration(h.offset) + ("" if h.frame_bytes is None else f"\n{h.frame_bytes}")
        t.add_row(str(i), Text(_point_name(h.point, narrow)), h.direction, when, _ttl_text(h, ch, sep.count("\n") + 1),
                  addr, encap)
        notes.append(f"{i:>2} ", style="dim")
        notes.append(safe(h.why) + "\n", style=ENCAP_STYLE if ch & {"encap", "decap"} else ("yellow" if ch else "dim"))
        carriage = _carriage_note(h, explained)
        if carriage:
            notes.append(f"   {carriage}\n", style="cyan")
            explained = True
    not_visible_rows(len(p.hops) + 1)
    stopped = p.stopped
    for m in stopped:
        unsure = " (nothing captured then)" if m in p.not_captured else ""
        t.add_row("✗", Text(_point_name(m, narrow), style="red"), "", "", "", Text("not seen here" + unsure, style="red"), "")
    if p.not_visible:
        notes.append(f" ◌ not visible at {', '.join(safe(m) for m in p.not_visible)}: its data path may carry packets "
                     "past there unseen (an eBPF redirect; tracer path says why): not a loss\n", style="cyan")
    if p.gaps:
        notes.append(f" · not captured at {', '.join(safe(m) for m in p.gaps)}: seen before and after (a frame the "
                     "capture missed, not a loss)\n", style="yellow")
    if stopped:
        notes.append(f" ✗ stopped after {safe(p.last_seen)}: not seen at {', '.join(safe(m) for m in stopped)}\n",
                     style="red")
        if p.hint:
            notes.append(f"   {safe(p.hint)}\n", style="red")
    if p.not_captured:
        notes.append(f" ? {', '.join(safe(m) for m in p.not_captured)}: their node captured nothing at that time (a "
                     "capture begun later or ended sooner?): if it was not capturing, the packet may have gone on "
                     "unseen\n", style="yellow")
    notes.rstrip()
    t.caption = notes
    return t


SUPER_FRAME = 1518
"""Bytes of the longest Ethernet frame of a 1500-byte MTU (a VLAN tag included): a longer one
at a capture point is a super-frame (TSO/GSO, GRO), not a frame of the wire."""


def _carriage_note(h: Hop, explained: bool) -> str:
    """How the packet's bytes were carried at this hop, if not as one frame as before; a frame
    longer than a wire's explained (unless `explained` already)."""
    c = h.carried
    if c is not None:
        sizes = sorted(set(c.frame_bytes))
        of = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
        return f"{c.note}, of {of} bytes: its {c.bytes} bytes all here"
    if h.frame_bytes is not None and h.frame_bytes > SUPER_FRAME and not explained:
        return (f"{h.frame_bytes} bytes, more than a wire's frame: a super-frame (the stack hands a NIC TCP data "
                "so, TSO/GSO cuts it for the wire, GRO merges what arrives so)")
    return ""


def _ttl_text(h: Hop, changed: set[str], lines: int) -> Text:
    """The inner packet's TTL on its L3 line; under a tunnel, the outer header's TTL on the outer
    IP line too (what the underlay's routers count down). `lines`: lines an address pair takes."""
    t = Text("\n" * lines)
    t.append("-" if h.ttl is None else str(h.ttl), style=CHANGE_STYLE if "ttl" in changed else "")
    if h.encap is not None and h.encap.outer_ttl is not None:
        pairs = 2 if h.encap.outer_eth_src else 1  # (outer MAC, outer IP: the outer IP's is the last)
        t.append("\n" * (lines * pairs) + str(h.encap.outer_ttl), style=ENCAP_STYLE)
    return t


def _rows_before(p: PacketTrace, way: tuple[str, ...], gaps: tuple[str, ...], last: int | None = None) -> dict[int, list[str]]:
    """Hop number -> the points of `gaps` (the packet's gaps or the points it was not visible at)
    that come just before that hop on the way (their rows go between the hops, where the packet
    passed them); those after every hop under `last` (default: before the last hop)."""
    out: dict[int, list[str]] = {}
    place = {pt: k for k, pt in enumerate(way)}
    for g in gaps:
        k = place.get(g)
        hop = next((i for i, h in enumerate(p.hops, 1) if k is not None and place.get(h.point, -1) > k),
                   len(p.hops) if last is None else last)
        out.setdefault(hop, []).append(g)
    return out


def _point_name(point: str, narrow: bool) -> str:
    """A point's id as its hop row shows it: `node/interface`, narrow over two lines."""
    return safe(point).replace("/", "/\n", 1) if narrow else safe(point)


def lay_out(table: Table, console: Console) -> Text | None:
    """The text rich prints for a packet table, laid out directly: rich's general table layout
    (measuring, wrapping, cropping every cell) takes ~10 ms a table, most of a follow's view.
    Only for what packet_table builds (SIMPLE_HEAD, no edge padding, one space of padding,
    plain str/Text cells, left/right justified) and only when every row fits the console as
    it is; else None, and rich lays it out (it wraps, folds, squeezes the columns).
    tests/test_render_golden.py checks both give the same text, styles included."""
    if (table.box is not box.SIMPLE_HEAD or table.show_edge or table.pad_edge or table.padding != (0, 1, 0, 1)
            or not table.show_header or table.show_footer or table.row_styles or table.expand or table.width
            or table.title_justify != "left" or table.caption_justify != "left" or table.border_style
            or table.style not in ("", "none") or table.show_lines or table.leading
            or not isinstance(table.title, (Text, type(None))) or not isinstance(table.caption, (Text, type(None)))
            or any(r.style or r.end_section for r in table.rows)):
        return None
    columns = []  # (column, its cells: each a list of lines (plain, style, spans))
    for c in table.columns:
        if (c.justify not in ("left", "right") or c.style or c.header_style or c.vertical != "top" or c.width
                or c.max_width or c.highlight or not isinstance(c.header, str) or _marked_up(c.header)):
            return None
        cells = []
        for x in c.cells:
            if isinstance(x, str) and not _marked_up(x):
                cells.append([(line, "", ()) for line in x.split("\n")])
            elif isinstance(x, Text) and x.justify is None and x.overflow is None:
                cells.append([(line.plain, line.style, line.spans) for line in x.split("\n", allow_blank=True)]
                             if "\n" in x.plain else [(x.plain, x.style, x.spans)])
            else:
                return None
        columns.append((c, cells))
    last = len(columns) - 1
    widths = []  # of the text, without the padding
    for c, cells in columns:
        w = max([cell_len(h) for h in c.header.split("\n")] + [cell_len(line[0]) for lines in cells for line in lines])
        widths.append(max(w, c.min_width or 0))
    total = sum(widths) + 2 * last + last  # one space of padding inside each column edge, one between columns
    if total > console.width:
        return None
    plain: list[str] = []
    spans: list[Span] = []
    at = 0  # characters so far

    def put(text: str, style: str | Style = "", inner: list[Span] | tuple[Span, ...] = ()) -> None:
        nonlocal at
        plain.append(text)
        if style:
            spans.append(Span(at, at + len(text), style))
        spans.extend(Span(at + sp.start, at + sp.end, sp.style) for sp in inner)
        at += len(text)

    def annotation(t: Text | str | None) -> None:
        """Title and caption, wrapped to the table's width as rich does."""
        if t:
            t = Text(t) if isinstance(t, str) else t
            for line in t.wrap(console, total, justify=t.justify or "left", overflow=t.overflow or "fold"):
                put(line.plain, line.style, line.spans)
                put("\n")

    def row(cells: list[tuple[str, str | Style, tuple[Span, ...]]], style: str = "") -> None:
        """One line of the table; `style` (the header's) covers each cell's padding too."""
        for i, (c, (text, text_style, text_spans)) in enumerate(zip(table.columns, cells)):
            start = at
            put(" " if i else "", style)
            # the justification's padding is the text's own (its style covers it), the edges' not
            pad = " " * (widths[i] - cell_len(text))
            if c.justify == "right":
                put(pad, text_style)
            put(text, text_style, text_spans)
            if c.justify != "right":
                put(pad, text_style)
            if style:
                spans.append(Span(start, at, style))
            put(" " if i < last else "", style)
            put(" " if i < last else "\n")  # the divider, or the end of the line

    annotation(table.title)
    headers = [c.header.split("\n") for c, _ in columns]
    height = max(map(len, headers))
    for n in range(height):  # headers aligned to the bottom
        row([(h[n - height + len(h)] if n - height + len(h) >= 0 else "", "", ()) for h in headers], table.header_style)
    put("─" * total + "\n")
    blank = ("", "", ())
    for r in range(len(table.rows)):
        cells = [c[r] for _, c in columns]
        for n in range(max(map(len, cells))):  # cells aligned to the top
            row([c[n] if n < len(c) else blank for c in cells])
    annotation(table.caption)
    return Text("".join(plain)[:-1], spans=spans)  # (every line ends in an unstyled "\n")


def _marked_up(s: str) -> bool:
    """Whether rich would read more than plain text in a str cell (markup, emoji codes)."""
    return "[" in s or ":" in s


def flow_header(f: Flow, index: int, names: dict[str, str]) -> Text:
    t = Text(f"Flow {index}: ", style="bold cyan")
    t.append(f"{f.protocol.upper()} {safe(_label(f.client, names))} -> {safe(_label(f.server, names))}")
    if f.summary:
        t.append(f"   {f.summary.packets} packets", style="dim")
    if f.dns_name:
        t.append(f"\n  {safe(f.dns_name)}: the address a DNS answer gave before it", style="dim")
    if f.nat:  # (on a line of its own: where and by what it happened takes a line's room)
        t.append(f"\n  {f.nat.kind.upper()} {f.nat.original} -> {f.nat.translated} ({safe(f.nat.where)})", style=CHANGE_STYLE)
    return t


def arp_summary(f: Flow) -> str:
    """An ARP exchange in one line: who asked for what, how often, and the answer (or none)."""
    asks = [p.hops[0].arp for p in f.packets if p.hops and p.hops[0].arp and p.hops[0].arp.op == "request"]
    answers = [p.hops[0].arp for p in f.packets if p.hops and p.hops[0].arp and p.hops[0].arp.op == "reply"]
    parts = []
    if asks:
        a = asks[0]
        parts.append(f"{a.sender_ip} asked for {a.target_ip} {_times(len(asks))}")
    for r in {(r.sender_ip, r.sender_mac): r for r in answers}.values():
        parts.append(f"answer: {r.sender_ip} is at {r.sender_mac}")
    if asks and not answers:
        parts.append("no answer seen")
    return ", ".join(parts)


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def summary_line(f: Flow) -> Text:
    """MAC rewrites, encapsulation (VNI, port, +bytes), hops: the request's way in one line."""
    if f.protocol == "arp":
        return Text("summary: " + arp_summary(f), style="bold")
    req = next((p for p in f.packets if p.direction == "request" and not p.stopped), None) or (f.packets[0] if f.packets else None)
    if req is None:
        return Text("")
    macs = sum(1 for h in req.hops if "mac" in h.changes)
    enc = next((h.encap for h in req.hops if h.encap is not None), None)
    parts = [f"{len(req.hops)} hops", f"{macs} MAC rewrite{'s' if macs != 1 else ''}"]
    ttls = [h.ttl for h in req.hops if h.ttl is not None]
    if ttls:
        parts.append(f"TTL {ttls[0]} -> {ttls[-1]}")
    if f.nat:
        parts.append(f"{f.nat.kind.upper()} {f.nat.original} -> {f.nat.translated} on {safe(f.nat.node)}")
    if enc:
        parts.append(f"{enc.type.upper()} VNI {enc.vni} on UDP {enc.udp_dport}, +{enc.bytes_added} bytes" if enc.udp_dport
                     else f"{enc.type.upper()} +{enc.bytes_added} bytes")
    syns = [p for p in f.packets if p.tcp_flags == "S"]
    if syns and not any(p.tcp_flags == "SA" for p in f.packets):
        parts.append(f"no answer: SYN sent {len(syns)} time{'s' if len(syns) != 1 else ''}, no SYN-ACK seen")
    lost = sum(1 for p in f.packets if p.stopped)
    if lost:
        parts.append(f"{lost} packet{'s' if lost != 1 else ''} stopped on the way")
    gaps = sum(1 for p in f.packets if p.gaps)
    if gaps:
        parts.append(f"{gaps} not captured at a point {'they' if gaps != 1 else 'it'} passed")
    hidden = sum(1 for p in f.packets if p.not_visible)
    if hidden:
        parts.append(f"{hidden} not visible at a point {'their' if hidden != 1 else 'its'} data path may bypass")
    return Text("summary: " + ", ".join(parts), style="bold")


def render_flows(trace: Trace, console: Console, flows: list[Flow], names: dict[str, str],
                 body: Callable[[Flow], None], legend: Callable[[], None] = lambda: None) -> None:
    """What every per-flow view shares: the warnings first, each flow's header, its `body`, its
    summary line, then the `legend` and the capture points."""
    render_warnings(trace, console)
    if not flows:
        render_no_flows(trace, console)
    number = flow_numbers(trace)
    for f in flows:
        console.print(flow_header(f, number[id(f)], names))
        body(f)
        console.print(summary_line(f))
        console.print()
    legend()
    render_footer(trace, console)


def render_hops(trace: Trace, console: Console, flows: list[Flow], names: dict[str, str] | None = None) -> None:
    names = names or {}

    def tables(f: Flow) -> None:
        for pi, p in enumerate(f.packets, 1):
            way = f.summary.way.get(p.direction) if f.summary else None
            table = packet_table(p, pi, names, narrow=console.width < NARROW, way=way)
            laid_out = lay_out(table, console)
            if laid_out is not None:
                console.print(laid_out, soft_wrap=True)
            else:
                console.print(table)
            console.print()

    render_flows(trace, console, flows, names, tables)
