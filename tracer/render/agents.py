"""The views of `tracer agents`: a line of what was done, a table of the nodes' agents, and the
tracer.agents/v1 JSON document (-o json)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tracer.model.agents import AGENTS_SCHEMA, AgentsView

_DONE = {
    "installed": "warm capture agents installed",
    "updated": "warm capture agents updated to the image",
    "unchanged": "warm capture agents were installed already",
    "uninstalled": "warm capture agents uninstalled",
    "none": "no warm capture agents were installed",
}


def render_agents(view: AgentsView, out: Console) -> None:
    where = f"lab {view.where}" if view.backend == "lab" else f"namespace {view.where}"
    if view.action == "status":
        head = (f"warm capture agents ({where})" if view.installed else
                f"no warm capture agents ({where}): follow starts its own per run; tracer agents install")
    else:
        head = f"{_DONE.get(view.action, view.action)} ({where}" + (f", image {view.image}" if view.image else "") + ")"
    out.print(escape(head))
    if not view.nodes or (view.action in ("uninstalled", "none") and not any(n.where for n in view.nodes)):
        return
    table = Table(box=None, pad_edge=False)
    for col in ("node", "agent", "state"):
        table.add_column(col, overflow="fold")
    for n in view.nodes:
        table.add_row(escape(n.node), escape(n.where or "-"), ("[green]" if n.ready else "[yellow]") + escape(n.state))
    out.print(table)


def agents_json(view: AgentsView) -> str:
    # Spelled out key by key: the schema is a promise to scripts.
    return json.dumps({
        "schema": AGENTS_SCHEMA,
        "backend": view.backend,
        "action": view.action,
        "installed": view.installed,
        "where": view.where,
        "image": view.image,
        "nodes": [{"node": n.node, "ready": n.ready, "agent": n.where, "state": n.state} for n in view.nodes],
    }, indent=2)
