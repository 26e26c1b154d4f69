"""The live grid of `tracer watch` / `follow --live`: the newest request, one row per packet, one
column per point of the way, each cell lit when the packet is seen there. Made for a projector:
big marks, few words."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tracer.model.live import LiveCell, LiveSnapshot
from tracer.render.header import curl_text
from tracer.render.text import safe


def cell(c: LiveCell | None, compact: bool = False) -> Text:
    """A cell: `·` not seen; else what changed against the previous point the packet passed:
    `⊕4096` encapsulated (VXLAN VNI), `⊖` decapsulated, `M` MAC rewritten, `●` nothing, then
    the TTL (yellow where routing took one off). `compact`: no spaces and no VNI (`⊕63`)."""
    if c is None:
        return Text("·", style="dim")
    gap = "" if compact else " "
    t = Text()
    if "encap" in c.changes:
        t.append(f"⊕{'' if compact else c.tunnel}{gap}", style="bold magenta")
    elif "decap" in c.changes:
        t.append(f"⊖{gap}", style="bold magenta")
    if "dnat" in c.changes or "snat" in c.changes:
        t.append(f"⇄{gap}", style="bold yellow")
    if "mac" in c.changes:
        t.append(f"M{gap}", style="bold yellow")
    if not t:
        t.append(f"●{gap}", style="bold green")
    if c.ttl is None:  # (ARP: no TTL)
        t.rstrip()
    else:
        t.append(str(c.ttl), style="bold yellow" if "ttl" in c.changes else "green")
    return t


CELL_MARKS = ("● seen", "⊕ encapsulated (VNI)", "⊖ decapsulated", "M MAC rewritten", "⇄ NAT", "N the TTL (yellow: routed)")
"""What each mark of `cell` means (every view that shows cells gives these in its legend)."""


def title(s: LiveSnapshot) -> str:
    src, dst = s.way.src.pod, s.way.dst.pod
    return (f"watch {safe(src.name)} ({src.node}) → {safe(dst.name)} ({dst.node}): "
            f"GET {safe(s.url)}  [{s.backend}]")


def view(s: LiveSnapshot) -> Group:
    """The whole screen: title, the last request's answer, the way's legend, the grid, the keys."""
    way = s.way
    t = Table(show_edge=False, pad_edge=False, expand=False)
    t.add_column("packet", no_wrap=True, max_width=20)
    for i, p in enumerate(s.columns, 1):
        t.add_column(f"{i} {safe(p.node)}\n{safe(p.interface)}", justify="left", no_wrap=True, min_width=8, max_width=16)
    for row in s.rows:
        label = Text("→ " if row.request else "← ", style="bold cyan" if row.request else "bold blue")
        label.append(safe(row.summary))
        if row.to and row.to != way.dst.pod.name:
            label.append(f" ({safe(row.to)})", style="dim")
        on_way = row.on_way or (True,) * len(row.cells)
        t.add_row(label, *(cell(c) if on else Text("") for c, on in zip(row.cells, on_way)))
    head = Text(title(s), style="bold")
    if s.last_curl is not None:
        c = s.last_curl
        head.append(f"\nrequest {s.requests}: {curl_text(c)}", style="green" if c.ok else "red")
    src, dst = way.src, way.dst
    legend = Text(f"{safe(src.pod.name)} {src.pod.ip} eth0 {src.mac}  →  {safe(dst.pod.name)} {dst.pod.ip} eth0 {dst.mac}",
                  style="dim")
    if way.tunnel:
        tu = way.tunnel
        legend.append(f"\n{safe(tu.device)} VNI {tu.vni} UDP {tu.udp_port} +50B: {tu.src_node_ip} ↔ {tu.dst_node_ip}",
                      style="dim")
    keys = Text("  ".join((*CELL_MARKS, "· not seen there (yet)")), style="dim")
    parts = [head, legend, t, keys, Text(f"{s.frames} frames captured  ·  Ctrl-C to stop", style="dim")]
    parts += [Text(f"warning: {safe(e)}", style="red") for e in s.errors[-3:]]
    return Group(*parts)


class LiveScreen:
    """Shows each snapshot it is given in place (rich's Live), from the first one on; the last
    stays on the screen when it is closed."""

    REFRESH = 12  # per second

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self._live: Live | None = None

    def __call__(self, snapshot: LiveSnapshot) -> None:
        if self._live is None:
            self._live = Live(view(snapshot), console=self.console, refresh_per_second=self.REFRESH, transient=False)
            self._live.start()
        else:
            self._live.update(view(snapshot))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> LiveScreen:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
