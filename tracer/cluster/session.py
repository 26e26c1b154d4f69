"""A capture session: one capture agent per node of the way, each on exactly that node's points
with the kernel filter for this flow (tracer.cluster.filters); `close()` ends them all."""

from __future__ import annotations

import contextlib
import os
import time

from tracer.cluster.agents import AgentClient, PointCapture, agent_argv
from tracer.cluster.filters import capture_plan
from tracer.cluster.ports import FollowBackend
from tracer.model import Way


class CaptureSession:
    """One capture agent per node of the way; `close()` (also on any error) ends them all."""

    def __init__(self, backend: FollowBackend, way: Way, port: int, *, run_id: str | None = None,
                 stream: bool = False, max_seconds: float = 300.0, dns: Way | tuple[Way, ...] | None = None,
                 dns_ip: str = "",
                 others: tuple[Way, ...] = ()):
        """`dns`, `dns_ip`: the way of the source pod's DNS query and the DNS Service's ClusterIP;
        `others`: the ways to a Service's other endpoints; captured too
        (tracer.cluster.filters.capture_plan)."""
        self.backend = backend
        self.way = way
        self.run_id = run_id or f"tracer-{os.urandom(4).hex()}"
        self.plan = capture_plan(way, port, dns, dns_ip, others)
        self.stream = stream
        self.max_seconds = max_seconds
        self.agents: list[AgentClient] = []

    def start(self, timeout: float) -> None:
        """Start every agent first (they import scapy in parallel), then wait for each to listen."""
        for node, specs in self.plan.items():
            argv = agent_argv(self.run_id, specs, max_seconds=self.max_seconds, stream=self.stream)
            self.agents.append(AgentClient(self.backend.start_agent(node, argv), node, self.run_id))
        deadline = time.monotonic() + timeout
        for agent in self.agents:
            agent.wait_ready(max(deadline - time.monotonic(), 0.001))

    def stop_and_collect(self, timeout: float) -> dict[str, PointCapture]:
        """Stop every agent at once; each drains its sockets, then sends its pcaps."""
        for agent in self.agents:
            agent.send_stop()
        deadline = time.monotonic() + timeout
        out = {}
        for agent in self.agents:
            for iface, cap in agent.collect(max(deadline - time.monotonic(), 0.001)).items():
                out[f"{agent.node}/{iface}"] = cap
        return out

    def hang_up(self) -> None:
        """Let every agent go without waiting for it (EOF on its stdin); close() still reaps it."""
        for agent in self.agents:
            hang_up = getattr(agent.channel, "hang_up", None)
            if hang_up is not None:
                with contextlib.suppress(Exception):
                    hang_up()

    def close(self) -> None:
        self.hang_up()
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.channel.close()
        self.backend.close()
