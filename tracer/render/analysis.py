"""An Analysis shown: the merged pcapng, then the view --output names (OUTPUTS): the text view
(hops or summary) or the JSON document."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from tracer.model.analysis import Analysis
from tracer.render.outputs import OUTPUTS

if TYPE_CHECKING:
    from rich.console import Group


def show(a: Analysis, out: TextIO, *, output: str = "text", summary: bool = False, pcapng: str | None = None,
         extra_json: dict | None = None, header: Group | None = None, hint: str = "--flow N for one flow's hops",
         view: str | None = None, progress: Callable[[None], None] = lambda share: None) -> None:
    """Write what `tracer analyze` shows to `out` (status to stderr). `progress` is called with
    None when the progress line is to be wiped, before anything is written; `hint` is what the
    summary view says gives one flow's hops."""
    if pcapng:
        from tracer.render.pcapng import write_pcapng

        assert a.frames is not None, "analyze() keeps the frames when asked for a pcapng"
        n = write_pcapng(a.trace, a.frames, pcapng, a.other_frames)
        progress(None)
        k = len(a.trace.points)
        print(f"tracer: wrote {pcapng}: {n:,} frame{'s' if n != 1 else ''} of {k} point{'s' if k != 1 else ''}, "
              "the point as the frame's "
              "interface, its hop as its comment (columns frame.interface_name and frame.comment)", file=sys.stderr)
    module, _, function = OUTPUTS[output].partition(":")
    show_view = getattr(importlib.import_module(module), function)
    show_view(a, out, summary=summary, extra_json=extra_json, header=header, hint=hint, view=view, progress=progress)


def show_text(a: Analysis, out: TextIO, *, summary: bool, extra_json: dict | None, header: Group | None,
              hint: str, view: str | None, progress: Callable[[None], None]) -> None:
    """The text view: the header (follow's), the flows not shown, then the hops or the summary."""
    from rich.console import Console  # (not needed for --output json)

    from tracer.render import hops, summary as summary_view

    progress(None)
    console = Console(file=out, highlight=False, soft_wrap=False, width=_width(out))
    if header is not None:
        from rich.console import Group
        from rich.text import Text
        for part in header.renderables if isinstance(header, Group) else [header]:
            # a line marked not to be wrapped (one with a path to copy) is left whole to the terminal
            console.print(part, soft_wrap=isinstance(part, Text) and bool(part.no_wrap))
    trace, shown = a.trace, list(a.shown)
    if len(shown) < len(trace.flows):
        ids = {id(f) for f in shown}
        hidden = [f for f in trace.flows if id(f) not in ids]
        n = sum(f.summary.packets if f.summary else len(f.packets) for f in hidden)
        # (tracer follow's own --flow is its run's connections: --all-flows shows the others)
        by_user = a.chosen_by_flow and a.strict_flows
        why = " not matching --flow" if by_user else ("" if a.chosen_by_flow else ", neither HTTP nor with packets that stopped,")
        how = "" if by_user else " (--all-flows)"
        console.print(f"{len(hidden):,} other flow{'s' if len(hidden) != 1 else ''} ({n:,} packets){why} in the "
                      f"captures not shown{how}", style="dim")
    if a.summary_view:
        if not summary:
            why = "" if a.kept_packets else f"{trace.total_packets:,} frames in the captures, "
            console.print(f"{why}{a.shown_packets:,} packets in the selected flows: showing the summary "
                          f"({hint})", style="dim")
        summary_view.render_summary(trace, console, shown)
    elif view == "hops":
        hops.render_hops(trace, console, shown, a.names)
    else:  # (the default for a few flows: a row per packet, a mark per point, what a class can read)
        from tracer.render.grid import render_grid

        render_grid(trace, console, shown, a.names)
        if view is None and any(f.packets for f in shown):
            console.print("--view hops: each packet's hops with their addresses, MACs, TTLs and why", style="dim")


def _width(out: TextIO) -> int | None:
    return None if getattr(out, "isatty", lambda: False)() else 200
