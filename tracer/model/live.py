"""The live grid of `tracer watch` as values: a snapshot of the newest request's packets."""

from __future__ import annotations

from dataclasses import dataclass

from tracer.model.follow import CurlResult
from tracer.model.way import Way, WayPoint


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
    """One per column (LiveSnapshot.points), in their order (None: not seen there)."""
    on_way: tuple[bool, ...] = ()
    """Per column: whether it is on this packet's way (() : every column is; a request that may
    take several ways: a Service's endpoints, the DNS lookup's)."""
    to: str = ""
    """The pod its way goes to, where there are several ways."""


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
    points: tuple[WayPoint, ...] = ()
    """The grid's columns: the way's points, then what the other ways add (() : the way's)."""

    @property
    def columns(self) -> tuple[WayPoint, ...]:
        return self.points or self.way.points
