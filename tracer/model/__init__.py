"""The model: what tracer found and did, as plain frozen values (trace, way, analysis, follow, live,
lab). Views and JSON documents know only these."""

from tracer.model.trace import (
    ROLES, SCHEMA, Arp, CapturePoint, Carriage, Dns, Encapsulation, Flow, FlowSummary, Hop, Nat, PacketTrace, SegmentStats, Trace,
    duration,
)
from tracer.model.way import PATH_SCHEMA, WAY_POINT_ROLES, NodeTunnel, PodEnd, PodRef, ServiceRef, Way, WayPoint

__all__ = ["PATH_SCHEMA", "ROLES", "SCHEMA", "WAY_POINT_ROLES", "Arp", "CapturePoint", "Carriage", "Dns", "Encapsulation", "Flow", "FlowSummary",
           "Hop", "Nat", "NodeTunnel", "PacketTrace", "PodEnd", "PodRef", "ServiceRef", "SegmentStats", "Trace", "Way", "WayPoint",
           "duration"]
