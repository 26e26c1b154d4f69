"""The live grid of `tracer watch` as values: a snapshot of the newest request's packets."""

from __future__ import annotations

from dataclasses import dataclass

from tracer.model.follow import CurlResult
from tracer.model.way import Way


@dataclass(frozen=True, kw_only=True)
class LiveCell:
    """A packet seen at one point of the way, in the live grid."""

    changes: tuple[str, ...]
    """What changed against the point where the packet was seen before (tracer.correlate.changes)."""
    ttl: int | None
    tunnel: str | None = None
    """Where it was encapsulated here: the VNI (or the tunnel's type when it has none)."""


@dataclass(frozen=True, kw_only=True)
class LiveRow:
    """One packet of the live grid."""

    summary: str
    request: bool
    """client -> server, or the response."""
    cells: tuple[LiveCell | None, ...]
    """One per point of the way, in its order (None: not seen there)."""


@dataclass(frozen=True, kw_only=True)
class LiveSnapshot:
    """Everything the live grid shows at one moment."""

    way: Way
    url: str
    backend: str
    rows: tuple[LiveRow, ...]
    """The packets of the newest request."""
    requests: int
    last_curl: CurlResult | None
    frames: int
    errors: tuple[str, ...]
