"""The summary view: flows, loss and latency per segment of the way, without hops."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracer.model import Flow, Trace, duration
from tracer.render.text import flow_numbers, render_footer, render_warnings, safe


def render_summary(trace: Trace, console: Console, flows: list[Flow]) -> None:
    render_warnings(trace, console)
    console.print(Text(f"{trace.total_packets:,} frames at {len(trace.points)} points, {trace.matched_packets:,} distinct "
                       f"packets in {len(trace.flows):,} flow{'s' if len(trace.flows) != 1 else ''}", style="bold"))
    ft = Table(title="flows (those with packets that stopped first)", title_justify="left", show_edge=False,
               pad_edge=False)
    for col in ("#", "proto", "client", "server", "NAT", "packets", "reached end", "stopped at"):
        ft.add_column(col, overflow="fold")
    number = flow_numbers(trace)
    for f in sorted(flows, key=lambda f: not (f.summary and f.summary.stopped))[:50]:
        s = f.summary
        stopped = ", ".join(f"{safe(p)}: {n:,}" for p, n in (s.stopped.items() if s else []))
        ft.add_row(str(number[id(f)]), f.protocol, safe(f.client), safe(f.server),
                   f"{f.nat.kind} {f.nat.original}" if f.nat else "", f"{s.packets if s else 0:,}",
                   f"{s.reached_end if s else 0:,}", Text(stopped, style="red") if stopped else "")
    console.print(ft)
    if len(flows) > 50:
        console.print(f"... and {len(flows) - 50:,} more flows (--output json lists all)", style="dim")
    st = Table(title="segments (consecutive points of the ways), latency: median and 99th percentile",
               title_justify="left", show_edge=False, pad_edge=False)
    uncaptured = any(s.not_captured for s in trace.segments)  # (a column only when there is something in it)
    for col in ("from", "to", "packets", "lost", *(("not captured",) if uncaptured else ()), "median", "p99"):
        st.add_column(col, overflow="fold")
    for s in trace.segments:
        gap = (Text(f"{s.not_captured:,}", style="yellow" if s.not_captured else ""),) if uncaptured else ()
        st.add_row(safe(s.src), safe(s.dst), f"{s.packets:,}", Text(f"{s.lost:,}" + (f" ({s.bytes_lost:,} B)" if s.bytes_lost else ""), style="red" if s.lost else ""), *gap,
                   duration(s.latency_median), duration(s.latency_p99))
    console.print(st)
    render_footer(trace, console)
