"""The model: what tracer found, as plain frozen values. Views and JSON know only these."""

from tracer.model.trace import (
    ROLES, SCHEMA, CapturePoint, Encapsulation, Flow, FlowSummary, Hop, Nat, PacketTrace, SegmentStats, Trace,
    duration,
)

__all__ = ["ROLES", "SCHEMA", "CapturePoint", "Encapsulation", "Flow", "FlowSummary", "Hop", "Nat", "PacketTrace",
           "SegmentStats", "Trace", "duration"]
