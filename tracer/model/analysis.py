"""An analysis as values: the trace of a set of captures and what of it a view shows."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tracer.model.trace import Flow, OtherFrame, RawFrame, Trace


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """What the captures hold and what of it the view shows."""

    trace: Trace
    shown: tuple[Flow, ...]
    """The flows to show: those --flow chose, else the HTTP flows and those with packets that
    stopped, else all (see select_flows)."""
    chosen_by_flow: bool
    """--flow was given: the JSON document holds only the shown flows."""
    strict_flows: bool
    kept_packets: bool
    """Every packet's hops were kept (else only the flows' counters: the summary view)."""
    summary_view: bool
    """The text view is the summary: asked for, only counters kept, or too many packets to list."""
    shown_packets: int
    names: dict[str, str]
    """IP -> pod name, shown next to addresses."""
    frames: tuple[tuple[tuple[RawFrame, ...], ...], ...] | None = None
    """With --pcapng: every kept packet's frames, per flow of `trace.flows`, per packet, per hop."""
    other_frames: tuple[OtherFrame, ...] = ()
    """With --pcapng: the frames that are no packet of a flow (see OtherFrame)."""

    @property
    def document_trace(self) -> Trace:
        """The trace of the JSON document: the shown flows when --flow chose them."""
        return replace(self.trace, flows=self.shown) if self.chosen_by_flow else self.trace
