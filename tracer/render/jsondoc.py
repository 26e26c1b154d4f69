"""The `tracer.trace/v1` JSON contract. Fields may be added; none is renamed or removed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TextIO

from tracer.model import SCHEMA, Encapsulation, Flow, Hop, Nat, PacketTrace, Trace
from tracer.model.analysis import Analysis
from tracer.model.follow import FollowRun


def _encap(e: Encapsulation | None) -> dict | None:
    return None if e is None else dataclasses.asdict(e)


def _hop(h: Hop) -> dict:
    return {
        "point": h.point, "time": h.time, "offset": h.offset, "direction": h.direction,
        "eth_src": h.eth_src, "eth_dst": h.eth_dst, "ip_src": h.ip_src, "ip_dst": h.ip_dst,
        "sport": h.sport, "dport": h.dport, "ttl": h.ttl, "encap": _encap(h.encap),
        "changes": list(h.changes), "why": h.why, "frame_bytes": h.frame_bytes, "ip_id": h.ip_id,
        "arp": None if h.arp is None else dataclasses.asdict(h.arp),
        "carried": None if h.carried is None else dataclasses.asdict(h.carried),
    }


def _packet(p: PacketTrace) -> dict:
    return {
        "direction": p.direction, "tcp_flags": p.tcp_flags, "ip_id": p.ip_id, "payload_bytes": p.payload_bytes,
        "tcp_seq": p.tcp_seq,
        "summary": p.summary, "hops": [_hop(h) for h in p.hops], "last_seen": p.last_seen, "missing": list(p.missing),
        "not_captured": list(p.not_captured), "gaps": list(p.gaps), "hint": p.hint, "retransmission": p.retransmission,
        "not_visible": list(p.not_visible),
        "dns": None if p.dns is None else dataclasses.asdict(p.dns),
    }


def _nat(n: Nat | None) -> dict | None:
    return None if n is None else {"original": n.original, "translated": n.translated, "kind": n.kind, "point": n.point,
                                   "previous_point": n.previous_point}


def _flow(f: Flow, summary: bool) -> dict:
    d = {"client": f.client, "server": f.server, "protocol": f.protocol, "nat": _nat(f.nat), "http": f.http,
         "dns_name": f.dns_name}
    if not summary:
        d["packets"] = [_packet(p) for p in f.packets]
    if f.summary is not None:
        s = f.summary
        d["summary"] = {"packets": s.packets, "reached_end": s.reached_end, "per_point": s.per_point,
                        "way": {k: list(v) for k, v in s.way.items()}, "stopped": s.stopped,
                        "not_captured": s.not_captured, "gaps": s.gaps, "not_visible": s.not_visible,
                        "bytes": s.bytes, "bytes_per_point": s.bytes_per_point, "bytes_reached_end": s.bytes_reached_end}
    return d


def trace_to_dict(t: Trace, *, summary: bool = False, extra: dict | None = None) -> dict:
    d = {
        "schema": SCHEMA,
        "points": [{"id": p.id, "node": p.node, "interface": p.interface, "role": p.role, "packets": p.packets,
                    "undecoded": p.undecoded, "files": list(p.files)} for p in t.points],
        "clock_offsets": t.clock_offsets,
        "reference_node": t.reference_node,
    }
    if summary:  # (before the flows, as the warnings: what to know first, however many flows follow)
        d["summary"] = {
            "flows": len(t.flows),
            "frames": t.total_packets,
            "packets": t.matched_packets,
            "reached_end": sum(f.summary.reached_end for f in t.flows if f.summary),
            "segments": [dataclasses.asdict(s) for s in t.segments],
        }
    d["warnings"] = list(t.warnings)
    d["flows"] = [_flow(f, summary) for f in t.flows]
    if extra:
        d.update(extra)
    return d


COMPACT_FLOWS = 1000


def dumps(t: Trace, *, summary: bool = False, extra: dict | None = None) -> str:
    """The document, indented; with more than COMPACT_FLOWS flows, each flow on a line of its own
    (indenting tens of thousands of flows takes longer than finding them)."""
    doc = trace_to_dict(t, summary=summary, extra=extra)
    flows = doc.get("flows", [])
    if len(flows) <= COMPACT_FLOWS:
        return json.dumps(doc, indent=2)
    token = f"\x00flows-{id(doc)}\x00"  # stands for the flows in the indented rest, keys in their order
    text = json.dumps({k: (token if k == "flows" else v) for k, v in doc.items()}, indent=2)
    encode = json.JSONEncoder(separators=(",", ":")).encode
    lines = ",\n".join("    " + encode(f) for f in flows)
    return text.replace(json.dumps(token), f"[\n{lines}\n  ]", 1)


def show_json(a: Analysis, out: TextIO, *, summary: bool, extra_json: dict | None, header: object, hint: str,
              view: str | None, progress: Callable[[None], None]) -> None:
    """--output json: the document on stdout (no header: `extra_json` carries what it would say)."""
    text = dumps(a.document_trace, summary=summary, extra=extra_json)
    progress(None)
    out.write(text + "\n")


def follow_document(r: FollowRun) -> dict[str, Any]:
    """The `follow` key of follow's tracer.trace/v1 document."""
    s, d = r.way.src.pod, r.way.dst.pod
    return {
        "backend": r.backend,
        "run_id": r.run_id,
        "src": {"name": s.name, "namespace": s.namespace, "node": s.node, "ip": s.ip},
        "dst": {"name": d.name, "namespace": d.namespace, "node": d.node, "ip": d.ip},
        "url": r.url,
        "service": dataclasses.asdict(r.way.service) if r.way.service else None,
        "curl": [asdict(c) for c in r.curls],
        "captures": [{"point": c.point, "packets": c.packets, "dropped": c.dropped, "offloads": dict(c.offloads)}
                     for c in r.captures],
        "saved": r.saved,
        "timings": dict(r.timings),
        "interrupted": r.interrupted,
        "save_error": r.save_error,
    }
