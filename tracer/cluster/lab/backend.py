"""`tracer follow` on the lab: agents are processes in the nodes' namespaces, pods are namespaces."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tracer.cluster.ports import ExecResult
from tracer.model import PodRef, ServiceRef
from tracer.errors import NotFoundError, UsageError
from tracer.cluster.lab import Lab
from tracer.cluster.lab import agents as lab_agents
from tracer.cluster.lab.state import log_tail
from tracer.cluster.backends import AGENT_MODES

AGENT = lab_agents.AGENT
STOP_GRACE = 1.0  # seconds an agent gets to exit after EOF on stdin, before SIGTERM and SIGKILL


class LabAgentChannel:
    """A capture agent run as `ip netns exec <node> python agent.py ...`, its stdin/stdout as pipes."""

    def __init__(self, proc: subprocess.Popen, stderr_file):
        self.proc = proc
        self._stderr = stderr_file
        self._closed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self, n: int, timeout: float) -> bytes:
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(timeout, 0))[0]:
            raise TimeoutError
        return os.read(fd, n)

    def exit_status(self) -> int | None:
        return self.proc.poll()

    def diagnostics(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def hang_up(self) -> None:
        """Close our ends of its pipes: EOF on its stdin makes the agent stop and exit by itself."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """EOF on its stdin, then SIGTERM, then SIGKILL, each after a grace time: by PID only."""
        if self._closed:
            return
        self._closed = True
        self.hang_up()
        proc = self.proc
        for sig, grace in ((None, STOP_GRACE), (signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
            if sig is not None and proc.poll() is None:
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self._stderr.close()


class WarmAgentChannel:
    """A connection to a node's warm agent (tracer.cluster.lab.agents): the agent the server
    forked for it reads its stdin from and writes its stdout to this socket."""

    def __init__(self, sock: socket.socket, node: str, log: str):
        self.sock = sock
        self.node = node
        self._log = log

    pid = None
    """(the agent's PID comes with its "ready")"""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, n: int, timeout: float) -> bytes:
        if not select.select([self.sock], [], [], max(timeout, 0))[0]:
            raise TimeoutError
        try:
            return self.sock.recv(n)
        except ConnectionResetError:
            return b""

    def exit_status(self) -> int | None:
        return None  # (the server reaps it; its events say how it ended)

    def diagnostics(self) -> str:
        return log_tail(self._log, 5)

    def hang_up(self) -> None:
        """Close the connection: the agent reads EOF, stops and exits by itself."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def close(self) -> None:
        self.hang_up()


class LabFollowBackend:
    """The lab as a `FollowBackend`.

    As the Kubernetes backend asks for a node's capture pod as soon as `pod()` finds a pod on it,
    `pod()` here starts the node's agent in standby (`agent.py --argv-from-stdin`): its Python
    starts and imports while discovery still runs, and `start_agent` then only hands it its
    arguments. `python=None` is this interpreter (whose site-packages have scapy).
    """

    name = "lab"

    def __init__(self, lab: Lab, *, python: str | None = None, agent: Path = AGENT, standby: bool = True,
                 run_id: str | None = None, agents: str = "auto"):
        """`agents`: "auto" the node's warm agent when the lab keeps them (lab up; `tracer agents
        install`), else one started for the run; "warm" the warm one or an error; "cold" always
        one started for the run."""
        if agents not in AGENT_MODES:
            raise UsageError(f"--agents {agents!r}: not one of {', '.join(AGENT_MODES)}")
        self.lab = lab
        self.agents = agents
        self.warm_nodes: list[str] = []
        """The nodes whose agent is warm in this run."""
        self.run_id = run_id
        """Names the standby agents in the process table, as --run-id names started ones."""
        self._discovery = lab.backend()
        self._python = [sys.executable] if python is None else [python]
        self._agent = agent
        self._standby_on = standby
        self._standby: dict[str, LabAgentChannel] = {}
        self.channels: list[LabAgentChannel | WarmAgentChannel] = []

    def pod(self, name: str) -> PodRef:
        ref = self._discovery.pod(name)
        self._stand_by(ref.node)
        return ref

    def service(self, name: str, namespace: str | None = None, *, cluster_ip: str | None = None) -> ServiceRef:
        return self._discovery.service(name, namespace, cluster_ip=cluster_ip)

    def expect_pods(self, *names: str) -> None:
        """The run is about these pods: start their nodes' agents now (a name the lab does not
        know is left for pod() to report, in its turn)."""
        for name in names:
            try:
                self._stand_by(self.lab.pod(name).node)
            except NotFoundError:
                continue

    def _stand_by(self, node: str) -> None:
        if node in self._standby:
            return
        channel = self._warm(node)
        if channel is None and self._standby_on:
            label = ["--run-id", self.run_id] if self.run_id else []
            channel = self._spawn(node, [*label, "--argv-from-stdin"])
        if channel is not None:
            self._standby[node] = channel

    def _warm(self, node: str) -> WarmAgentChannel | None:
        """A connection to `node`'s warm agent (started if the lab keeps them and it is not
        running), or None where the run's own agent is to be started."""
        if self.agents == "cold":
            return None
        store = self.lab.store
        path = lab_agents.ensure(store, node)
        sock = lab_agents.connect(path) if path is not None else None
        if sock is None:
            if self.agents == "warm":
                raise NotFoundError(f"no warm capture agent runs on lab node {node}",
                                    hint="tracer agents install   (or --agents auto: one started for the run)")
            return None
        channel = WarmAgentChannel(sock, node, str(store.log_path(f"agent-{node}")))
        self.channels.append(channel)
        self.warm_nodes.append(node)
        return channel

    def exec_pod(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        # No timeout of our own: what runs here (curl --max-time) bounds itself, and Ctrl-C
        # kills it (subprocess.run kills its child on any exception).
        return self.lab.exec(pod.name, argv, timeout=None)

    def exec_request(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        """The request's curl: the lab's pods all have it (the host's)."""
        return self.exec_pod(pod, argv)

    def exec_node(self, node: str, argv: Sequence[str]) -> ExecResult:
        return self._discovery.exec_node(node, argv)

    def start_agent(self, node: str, argv: Sequence[str]) -> LabAgentChannel | WarmAgentChannel:
        channel = self._standby.pop(node, None) or self._warm(node)
        if channel is None:
            return self._spawn(node, argv)
        try:
            channel.write(json.dumps(list(argv)).encode() + b"\n")
        except (OSError, ValueError):
            pass  # it has died: waiting for "ready" tells why, from its stderr
        return channel

    def _spawn(self, node: str, argv: Sequence[str]) -> LabAgentChannel:
        argv = [*self._python, str(self._agent), *argv]
        stderr = tempfile.TemporaryFile(prefix="tracer-agent-")
        # Signals wait until the process is recorded, so close() always knows every agent; the
        # agent has its own session, so a terminal's Ctrl-C reaches tracer, which stops it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            proc = self.lab.popen(node, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                  start_new_session=True)
            channel = LabAgentChannel(proc, stderr)
            self.channels.append(channel)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return channel

    def close(self) -> None:
        """End every agent this backend started (EOF, SIGTERM, SIGKILL by PID) and wait for it;
        agents still in standby exit at the EOF."""
        self._standby.clear()
        for channel in self.channels:  # all at once: they stop in parallel
            channel.hang_up()
        for channel in self.channels:
            channel.close()
