"""A follow run as values: the requests it fired and what each point captured."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.model.way import Way


@dataclass(frozen=True, kw_only=True)
class CurlResult:
    """One request fired from the source pod."""

    status: int | None
    """HTTP status, None when there was no HTTP answer."""
    time: float | None
    """curl's time_total in seconds."""
    exit_code: int
    error: str | None = None
    local_port: int | None = None
    """The source port curl's connection used: its flow is `<src ip>:<local_port>`. None when
    curl got no connection."""
    bytes: int | None = None
    """Bytes of the answer's body curl received (None without an HTTP answer)."""

    @property
    def ok(self) -> bool:
        """An HTTP answer below 400."""
        return self.exit_code == 0 and self.status is not None and self.status < 400


@dataclass(frozen=True, kw_only=True)
class PointCount:
    """What the agent captured at one point of the way."""

    point: str
    packets: int
    dropped: int = 0
    """Frames the kernel dropped because the agent's socket queue was full."""
    offloads: dict[str, str] = field(default_factory=dict)
    """The interface's offloads as the agent read them (`ethtool -k`'s names: tx-tcp-segmentation on, ...)."""


@dataclass(frozen=True, kw_only=True)
class FollowRun:
    """What a `tracer follow` run did: shown in its header and in the JSON document's `follow`."""

    way: Way
    run_id: str
    backend: str
    """"lab" or "kubernetes"."""
    url: str
    curls: tuple[CurlResult, ...]
    captures: tuple[PointCount, ...]
    saved: str | None
    """The directory the captures were kept in (--save), else None."""
    timings: dict[str, float]
    """Seconds of each phase so far: discover, agents_ready, request, collect, correlate."""
    interrupted: bool = False
    """Ctrl-C came while the requests ran: the captures end there."""
    save_error: str | None = None
    """What failed when --save's directory was written after the run (the run is shown anyway)."""
