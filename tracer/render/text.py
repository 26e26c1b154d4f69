"""What every text view shares: untrusted text made safe, the warnings, the capture points."""

from __future__ import annotations

import re

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracer.model import Trace

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(s: object) -> str:
    """Untrusted text (names, payload bytes) with control characters made visible."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(s))


def flow_numbers(trace: Trace) -> dict[int, int]:
    """id(flow) -> its number in the whole trace, as --flow N takes it (whatever is shown)."""
    return {id(f): i for i, f in enumerate(trace.flows, 1)}


def render_no_flows(trace: Trace, console: Console) -> None:
    """What a view says when it has no flow to show."""
    n = len(trace.flows)
    console.print(f"None of the {n} flow{'s' if n != 1 else ''} in the captures is the one asked for." if n else
                  "No IP flows found in these captures.", style="yellow")


def render_footer(trace: Trace, console: Console) -> None:
    pts = Table(title="capture points", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("point", "role", "frames", "undecoded"):
        pts.add_column(col, overflow="fold")
    for p in trace.points:
        pts.add_row(safe(p.id), p.role, f"{p.packets:,}", f"{p.undecoded:,}")
    console.print(pts)
    if trace.clock_offsets and all(abs(o) < 5e-7 for o in trace.clock_offsets.values()):
        console.print("clocks: every hop in order by its capture's clock (no offsets between nodes to correct)")
    elif trace.clock_offsets:
        offs = ", ".join(f"{safe(n)} {(o if abs(o) >= 5e-7 else 0.0):+.6f}s" for n, o in trace.clock_offsets.items())
        console.print(f"clock offsets against {safe(trace.reference_node)} (estimated from the traffic): {offs}")


def render_warnings(trace: Trace, console: Console) -> None:
    """First, before the flows: what they say (a file cut short, a capture begun late) bears on
    what follows. Not wrapped by us: a file's path in a warning stays whole, to be copied."""
    for w in trace.warnings:
        console.print(Text(f"warning: {safe(w)}", style="yellow"), soft_wrap=True)
