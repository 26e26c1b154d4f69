"""The client side of the capture agent's protocol (capture-pod/agent.py), over any AgentChannel.

The agent writes JSON lines on its stdout; a `pcap` or `frame` event is followed by exactly
`bytes` bytes of payload. The orchestrator writes `stop\\n` on its stdin. Both backends carry
these bytes unchanged (lab: pipes; Kubernetes: an exec stream), so this reader is the only
place that knows the format: `tracer.cluster.session` talks to every agent through it, and
`tracer.app.watch` reads the frames it hands out.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import ClusterError
from tracer.cluster.ports import AgentChannel

STOP = b"stop\n"
MAX_LINE = 64 * 1024
READ_CHUNK = 1 << 16
KILLED = (137, -signal.SIGKILL)
"""An agent's exit status after SIGKILL: a container runtime's 128 + 9, or a Popen's -9."""


class AgentError(ClusterError):
    """A capture agent that reported an error, died, or did not answer in time."""


@dataclass(frozen=True, kw_only=True)
class CaptureSpec:
    """What one agent captures: an interface and the kernel BPF filter for this flow there."""

    interface: str
    bpf: str


def agent_argv(run_id: str, captures: Sequence[CaptureSpec], *, max_seconds: float = 300.0,
               stream: bool = False) -> list[str]:
    """The agent's arguments (after `python3 agent.py`)."""
    argv = ["--run-id", run_id]
    for c in captures:
        argv += ["--capture", f"{c.interface}={c.bpf}"]
    argv += ["--max-seconds", f"{max_seconds:g}"]
    if stream:
        argv.append("--stream")
    return argv


@dataclass(frozen=True, kw_only=True)
class Event:
    """One protocol event: its JSON fields, and the bytes that followed it (pcap, frame)."""

    fields: dict[str, Any]
    payload: bytes = b""

    @property
    def kind(self) -> str:
        return str(self.fields.get("event", ""))


@dataclass(frozen=True, kw_only=True)
class PointCapture:
    """What an agent captured on one interface."""

    interface: str
    pcap: bytes
    packets: int
    dropped: int = 0
    """Frames the kernel dropped because the agent's socket queue was full."""
    offloads: dict[str, str] = field(default_factory=dict)
    """The interface's segmentation and receive offloads as the agent read them (`ethtool -k`'s
    names and words: tx-tcp-segmentation on, rx-gro off, ...)."""


@dataclass
class AgentClient:
    """Talks to one running agent: wait until it listens, then stop it and collect the pcaps."""

    channel: AgentChannel
    node: str
    run_id: str = ""
    interfaces: list[str] = field(default_factory=list)
    pid: int | None = None
    _buf: bytearray = field(default_factory=bytearray)

    def wait_ready(self, timeout: float) -> list[str]:
        """Block until the agent says every sniffer listens; its interfaces."""
        ev = self.next_event(time.monotonic() + timeout, waiting_for="ready")
        if ev.kind != "ready":
            raise self._unexpected(ev, "ready")
        self.interfaces = list(ev.fields.get("interfaces", []))
        self.pid = ev.fields.get("pid")
        return self.interfaces

    def send_stop(self) -> None:
        """Ask the agent to stop. One that has ended already is no error here: collect() then
        tells how it ended (its exit code), which is what a person needs to know."""
        try:
            self.channel.write(STOP)
        except (OSError, ValueError, ClusterError):
            pass  # (lab: the pipe is closed; Kubernetes: the exec stream is)

    def collect(self, timeout: float) -> dict[str, PointCapture]:
        """After send_stop(): the pcap of each interface, until the agent's `done`."""
        deadline = time.monotonic() + timeout
        out: dict[str, PointCapture] = {}
        while True:
            ev = self.next_event(deadline, waiting_for="its captures")
            if ev.kind == "pcap":
                f = ev.fields
                out[f["interface"]] = PointCapture(interface=f["interface"], pcap=ev.payload,
                                                   packets=int(f.get("packets", 0)), dropped=int(f.get("dropped", 0)),
                                                   offloads=_offloads(f.get("offloads")))
            elif ev.kind == "done":
                return out
            elif ev.kind != "frame":
                raise self._unexpected(ev, "pcap")

    def stop_and_collect(self, timeout: float) -> dict[str, PointCapture]:
        self.send_stop()
        return self.collect(timeout)

    def next_event(self, deadline: float, *, waiting_for: str = "an event") -> Event:
        """The next event; AgentError on an `error` event, EOF or the deadline."""
        line = self._read_line(deadline, waiting_for)
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError("not an object")
        except ValueError:
            raise AgentError(f"the capture agent on {self.node} said something that is not the protocol: "
                             f"{line[:200].decode(errors='replace')!r}",
                             hint=self._diagnostics() or "is the agent the same version as tracer?") from None
        if fields.get("event") == "error":
            raise AgentError(f"capture agent on {self.node}: {fields.get('message', 'failed')}",
                             hint=fields.get("hint") or self._diagnostics() or None)
        n = int(fields.get("bytes", 0)) if fields.get("event") in ("pcap", "frame") else 0
        payload = self._read_exactly(n, deadline, waiting_for) if n else b""
        return Event(fields=fields, payload=payload)

    def _fill(self, deadline: float, waiting_for: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AgentError(f"the capture agent on {self.node} did not send {waiting_for} in time",
                             hint=self._diagnostics() or "the node may be overloaded; raise --timeout")
        try:
            data = self.channel.read(READ_CHUNK, left)
        except TimeoutError:
            raise AgentError(f"the capture agent on {self.node} did not send {waiting_for} in time",
                             hint=self._diagnostics() or "the node may be overloaded; raise --timeout") from None
        if not data:
            raise self._ended(self.channel.exit_status(), waiting_for)
        self._buf += data

    def _ended(self, status: int | None, waiting_for: str) -> AgentError:
        """The error of an agent whose output ended: its exit code, and why, if the channel knows
        (Kubernetes: a 137 is the kubelet's kill at the pod's deadline, or the OOM killer's)."""
        if status is None:
            return AgentError(f"the capture agent on {self.node} closed its output before {waiting_for}",
                              hint=self._diagnostics() or "run the agent by hand to see why")
        if status not in KILLED:
            return AgentError(f"the capture agent on {self.node} exited with code {status} before {waiting_for}",
                              hint=self._diagnostics() or "run the agent by hand to see why")
        reason = getattr(self.channel, "exit_reason", None)
        why = reason(status) if reason else None
        return AgentError(f"the capture agent on {self.node} was killed (exit {status}) before {waiting_for}"
                          + (f": {why}" if why else ""),
                          hint=self._diagnostics() or "it did not fail by itself: something outside it sent SIGKILL")

    def _read_line(self, deadline: float, waiting_for: str) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[:i + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise AgentError(f"the capture agent on {self.node} sent a line longer than {MAX_LINE} bytes")
            self._fill(deadline, waiting_for)

    def _read_exactly(self, n: int, deadline: float, waiting_for: str) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline, waiting_for)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _diagnostics(self) -> str:
        """What the channel knows beyond stdout (e.g. the agent's stderr), if it can tell."""
        diag = getattr(self.channel, "diagnostics", None)
        try:
            return (diag() if diag else "").strip()[-500:]
        except Exception:  # noqa: BLE001 - diagnostics must never hide the real error
            return ""

    def _unexpected(self, ev: Event, wanted: str) -> AgentError:
        return AgentError(f"the capture agent on {self.node} sent {ev.kind or 'no event'!r} where {wanted!r} was due",
                          hint="is the agent the same version as tracer?")


def _offloads(value) -> dict[str, str]:
    """An agent's offloads field as names to words (an older agent sends none)."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
