"""The grid view: a flow's packets as rows, the points of its way as columns, a mark per hop.

What a class can read from the back of the room, as the live grid of `tracer watch` (the same
cells: tracer.render.live.cell), for saved or followed captures: a time column per packet (the 2 s
of /delay/2, a SYN's retransmission interval), retransmissions marked, and where a packet was
not captured or stopped.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracer.model import Flow, PacketTrace, Trace, duration
from tracer.model.live import LiveCell
from tracer.render.hops import render_flows
from tracer.render.live import CELL_MARKS, cell
from tracer.render.text import safe

LEGEND = (*CELL_MARKS, "○ not captured there", "✗ not seen from there on", "· not on its way (or after ✗)")
"""Every mark the grid uses (but ◌)."""
NOT_VISIBLE = "◌ not visible there (a point its data path may bypass)"
"""The legend's entry for ◌, given only when a packet shown has the mark."""
CARRIED = "×N its bytes in N frames there (TSO/GSO cut them, GRO merged them, or IP fragments)"
"""The legend's entry for ×N, given only when a packet shown has the mark."""


def label(p: PacketTrace) -> str:
    """`SYN`, `PSH-ACK GET /get`, `SYN (again)`: the packet without its addresses."""
    return p.label + (" (again)" if p.retransmission else "")


def row_cells(p: PacketTrace, points: list[str], compact: bool = False) -> list[Text]:
    """The packet's mark at each point of the way, in the way's order (`compact`: no spaces, no
    VNI, for a grid that must fit a narrow screen)."""
    hops = {h.point: h for h in p.hops}
    stopped = p.stopped
    lost_at = stopped[0] if stopped else None
    out = []
    for pid in points:
        h = hops.get(pid)
        if h is not None:
            vni = None
            if "encap" in h.changes and h.encap is not None:
                vni = str(h.encap.vni if h.encap.vni is not None else h.encap.type)
            mark = cell(LiveCell(changes=h.changes, ttl=h.ttl, tunnel=vni), compact)
            if h.carried is not None and h.carried.frames != 1:
                mark.append(f"×{h.carried.frames}", style="bold cyan")
            out.append(mark)
        elif pid in p.gaps:
            out.append(Text("○", style="yellow"))
        elif pid in p.not_visible:
            out.append(Text("◌", style="cyan"))
        elif pid in stopped:
            out.append(Text("✗", style="bold red") if pid == lost_at else Text("·", style="dim"))
        else:
            out.append(Text("·", style="dim"))
    return out


WIDE_COLUMN = 11  # a point's column at full size: its name's longest part, or "⊕4096 63", and the rule

def render_grid(trace: Trace, console: Console, flows: list[Flow], names: dict[str, str] | None = None) -> None:
    bypassed = any(p.not_visible for f in flows for p in f.packets)
    carried = any(h.carried is not None and h.carried.frames != 1 for f in flows for p in f.packets for h in p.hops)
    legend = (*LEGEND, *((NOT_VISIBLE,) if bypassed else ()), *((CARRIED,) if carried else ()))
    render_flows(trace, console, flows, names or {}, lambda f: _grid(trace, console, f),
                 legend=lambda: _print_entries(console, legend))


def _grid(trace: Trace, console: Console, f: Flow) -> None:
    """One flow's grid and the notes under it."""
    points = list(f.summary.way.get("request", ())) if f.summary else []
    for p in f.packets:  # (points the way does not name: a capture's odd ones, at the end)
        points += [h.point for h in p.hops if h.point not in points]
    # (a projector's 80 columns hold eight points only without names in the header: then the
    # points are numbered there and named in a line above)
    compact = console.width < 40 + WIDE_COLUMN * len(points)
    if compact:
        _print_entries(console, [f"{i} {safe(pid)}" for i, pid in enumerate(points, 1)])
    t = Table(show_edge=False, pad_edge=False, expand=False, padding=(0, 0 if compact else 1))
    t.add_column("#", justify="right")
    t.add_column("+time", justify="right")
    t.add_column("packet", no_wrap=True, max_width=14 if compact else 26)
    for i, pid in enumerate(points, 1):
        node, _, iface = pid.partition("/")
        head = str(i) if compact else f"{i} {safe(node)}\n{safe(iface)}"
        t.add_column(head, no_wrap=True, justify="center" if compact else "left",
                     min_width=4 if compact else 6, max_width=6 if compact else 16)
    t0 = None
    for k, p in enumerate(f.packets, 1):
        start = _corrected(trace, p)
        t0 = start if t0 is None else t0
        request = p.direction == "request"
        arrow = Text("→ " if request else "← ", style="bold cyan" if request else "bold blue")
        arrow.append(safe(label(p)), style="yellow" if p.retransmission else "")
        t.add_row(str(k), duration(start - t0), arrow, *row_cells(p, points, compact))
    console.print(t)
    for note in packet_notes(f.packets):
        console.print(note)


def packet_notes(packets) -> list[Text]:
    """Under the grid, what its marks cannot say: where packets stopped and what to look at,
    where they were not captured, which were retransmissions; packets that share a note share
    its line (`packets 1, 2: ...`)."""
    notes: dict[tuple[str, str], list[int]] = {}
    for k, p in enumerate(packets, 1):
        if p.retransmission:
            notes.setdefault(("yellow", "sent again: a retransmission (+time says after how long)"), []).append(k)
        if p.not_visible:
            notes.setdefault(("cyan", f"◌ not visible at {', '.join(safe(m) for m in p.not_visible)}: its data path "
                                      "may carry packets past there unseen (tracer path says why): not a loss"),
                             []).append(k)
        carried = [(h.point, h.carried) for h in p.hops if h.carried is not None]
        if carried:
            how = ", ".join(dict.fromkeys(f"{c.how} at {safe(pid)} ({c.by})" for pid, c in carried))
            notes.setdefault(("cyan", f"carried in other frames than sent: {how}; every byte counted, none lost "
                                      "there"), []).append(k)
        if p.gaps:
            notes.setdefault(("yellow", f"○ not captured at {', '.join(safe(m) for m in p.gaps)}: seen before and "
                                        "after (a frame the capture missed, not a loss)"), []).append(k)
        stopped = p.stopped
        if stopped:
            unsure = [m for m in stopped if m in p.not_captured]
            text = f"✗ stopped after {safe(p.last_seen)}: not seen at {safe(stopped[0])}" + (" nor after" if len(stopped) > 1 else "")
            if unsure:
                text += f" (nothing captured then at {', '.join(safe(m) for m in unsure)}: it may have gone on unseen)"
            if p.hint:
                text += f"\n    {safe(p.hint)}"
            notes.setdefault(("red", text), []).append(k)
    out = []
    for (style, text), ks in notes.items():
        which = f"packet {ks[0]}" if len(ks) == 1 else f"packets {_ranges(ks)}"
        out.append(Text(f"  {which}: {text}", style=style))
    return out


def _ranges(ks: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> `1-3, 5, 7, 8`."""
    parts, start = [], ks[0]
    for a, b in zip(ks, ks[1:] + [None]):
        if b != a + 1:
            parts.extend([str(start)] if start == a else [str(start), str(a)] if a == start + 1 else [f"{start}-{a}"])
            start = b
    return ", ".join(parts)


def _corrected(trace: Trace, p: PacketTrace) -> float:
    """When the packet was at its first point, on the reference node's clock."""
    h = p.hops[0]
    return h.time - trace.clock_offsets.get(h.point.split("/", 1)[0], 0.0)


def _print_entries(console: Console, entries, sep: str = "   ") -> None:
    """Entries on as few lines as the console's width takes, none cut in two."""
    line = ""
    for entry in entries:
        if line and len(line) + len(sep) + len(entry) > console.width:
            console.print(Text(line, style="dim"), soft_wrap=True)
            line = ""
        line = f"{line}{sep}{entry}" if line else entry
    console.print(Text(line, style="dim"), soft_wrap=True)
