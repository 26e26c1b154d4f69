"""The ports every cluster backend implements (the lab, Kubernetes), and what they hand back.

Discovery (tracer.cluster.discover) knows only `Backend`; `tracer path` opens and closes a
`DiscoveryBackend`; `tracer follow`'s orchestration (tracer.app.follow) knows only
`FollowBackend`. A capture agent (capture-pod/agent.py: standard library + scapy) runs on each
node with hostNetwork and speaks the line/frame protocol in tracer.cluster.agents over its
stdin/stdout, which both backends carry as raw bytes (lab: a pipe to a process in the node's
namespace; Kubernetes: a binary exec stream into a capture pod pinned to the node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tracer.model import PodRef, ServiceRef

__all__ = ["AgentChannel", "Backend", "DiscoveryBackend", "ExecResult", "FollowBackend"]


@dataclass(frozen=True, kw_only=True)
class ExecResult:
    """Outcome of one command run in a pod or on a node."""

    returncode: int
    stdout: bytes
    stderr: bytes


class Backend(Protocol):
    """What discovery needs from a cluster: find pods, run commands in pods and on nodes."""

    def pod(self, name: str) -> PodRef: ...

    def exec_pod(self, pod: PodRef, argv: Sequence[str]) -> ExecResult: ...

    def exec_node(self, node: str, argv: Sequence[str]) -> ExecResult: ...

    def service(self, name: str, namespace: str | None = None, *, cluster_ip: str | None = None) -> ServiceRef:
        """The Service `name` (in `namespace`, else the backend's), or the one whose ClusterIP is
        `cluster_ip`; a NotFoundError that says what there is when there is none."""


class DiscoveryBackend(Backend, Protocol):
    """A Backend opened for one `tracer path`: closed after discovery, whatever happens."""

    def close(self) -> None:
        """Remove what reading the nodes needed (Kubernetes: the capture pods). Idempotent."""


class AgentChannel(Protocol):
    """A running capture agent: its stdin and stdout as byte streams, and its end."""

    def write(self, data: bytes) -> None:
        """Send bytes to the agent's stdin (e.g. b"stop\\n")."""

    def read(self, n: int, timeout: float) -> bytes:
        """Up to n bytes of the agent's stdout; b"" at EOF; raises TimeoutError after timeout seconds."""

    def close(self) -> None:
        """End the agent (if still running) and release the channel. Idempotent."""

    def exit_status(self) -> int | None:
        """The agent's exit code once it has ended, else None."""


class FollowBackend(DiscoveryBackend, Protocol):
    """Discovery's Backend (pod, exec_pod, exec_node) plus what follow needs on top."""

    name: str
    """"lab" or "kubernetes" (shown to the user)."""

    def exec_request(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        """Run the request (curl) in the source pod: where exec_pod runs, or in a container added
        to the pod for it (Kubernetes: --curl-image). The packets leave the pod's own eth0."""

    def start_agent(self, node: str, argv: Sequence[str]) -> AgentChannel:
        """Start the capture agent on `node` with these arguments (after the agent program itself)."""

    def close(self) -> None:
        """Remove everything this backend started for the run (agents, capture pods). Idempotent,
        safe to call from `finally` and after Ctrl-C at any moment."""
