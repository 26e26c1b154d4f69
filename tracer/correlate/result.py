"""What correlation hands out: the points, the flows and the clocks, read by describe."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracer.capture.reader import PointState
from tracer.correlate.clocks import Clocks, Window
from tracer.correlate.flows import FlowState
from tracer.correlate.latency import LatencySamples

if TYPE_CHECKING:
    from tracer.correlate.engine import CorrelationOptions


@dataclass(frozen=True, kw_only=True)
class Correlation:
    """The result of `Correlator.run()`: everything describe turns into a model.Trace."""

    points: list[PointState]
    point_index: dict[str, int]
    """Point id (`node/interface`) -> its index in `points`."""
    flows: list[FlowState]
    """Each flow once, in the order every view numbers them (FlowTable.ordered: HTTP flows in request order first)."""
    clocks: Clocks
    window: Window
    """When each node was capturing, on the reference clock, with the final offsets."""
    latency: LatencySamples
    warnings: list[str]
    total_frames: int
    packets: int
    """Distinct packets (a packet seen at several points is one)."""
    options: CorrelationOptions
    unfollowed: list[tuple] = field(default_factory=list)
    """With kept packets: the frames that are no IP or ARP packet, (point index, time, Frame)."""

    @property
    def offsets(self) -> dict[str, float]:
        """Node -> its clock's offset against the reference node's."""
        return self.clocks.offsets

    def node_rank(self, node: str):
        """Orders nodes: the reference clock's first (see Clocks.node_rank)."""
        return self.clocks.node_rank(node)

    def segment_latency(self, seg: tuple[int, int], qs: Iterable[float]) -> list[float] | None:
        """Percentiles of the time from point a to point b, each on its own clock."""
        return self.latency.latency(seg, qs)
