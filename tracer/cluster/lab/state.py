"""The lab's state on disk, so that `down`, `status` and `exec` work from a new process.

The state is a journal as much as a record: `up` writes each namespace and process into it
*before* creating it, so `down` can remove what a crashed `up` left, and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracer.cluster.lab import netns
from tracer.cluster.lab.topology import Topology
from tracer.errors import LabError

DEFAULT_PREFIX = "tracer-"
DEFAULT_STATE_DIR = "/run/tracer"
SCHEMA = "tracer.labstate/v1"


def prefix_from_env() -> str:
    return os.environ.get("TRACER_LAB_PREFIX") or DEFAULT_PREFIX


def state_dir_from_env() -> Path:
    return Path(os.environ.get("TRACER_STATE_DIR") or DEFAULT_STATE_DIR)


@dataclass(frozen=True, kw_only=True)
class ProcessRecord:
    """A process the lab started (e.g. gunicorn serving httpbin in a pod)."""

    pid: int
    start_time: int
    """Start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused PID apart."""
    netns: str
    argv: tuple[str, ...]
    log: str

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


@dataclass(kw_only=True)
class LabState:
    """Everything `up` made: mutable while `up` runs, then saved as the lab's record."""

    prefix: str
    topology: Topology
    namespaces: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    complete: bool = False
    """False while `up` is still building (or if it died half-way)."""
    etc_dirs: list[str] = field(default_factory=list)
    """/etc/netns/<namespace> directories made for the pods' resolv.conf (removed with the lab)."""
    warm: bool = False
    """Whether the lab keeps warm capture agents (`lab up` does, unless --no-agents; `tracer
    agents install|uninstall` switch it): a follow then restarts one that died."""
    agents: dict[str, ProcessRecord] = field(default_factory=dict)
    """node -> its warm capture agent (`agent.py --serve`, tracer.cluster.lab.agents)."""
    agent_code: dict[str, str] = field(default_factory=dict)
    """node -> the digest of the agent.py its warm agent was started from (a newer tracer
    restarts an agent of older code)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "prefix": self.prefix,
            "created": self.created,
            "complete": self.complete,
            "namespaces": self.namespaces,
            "processes": [asdict(p) for p in self.processes],
            "topology": self.topology.to_dict(),
            "etc_dirs": self.etc_dirs,
            "warm": self.warm,
            "agents": {node: asdict(p) for node, p in self.agents.items()},
            "agent_code": dict(self.agent_code),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        return cls(
            prefix=data["prefix"],
            topology=Topology.from_dict(data["topology"]),
            namespaces=list(data["namespaces"]),
            processes=[_process(p) for p in data["processes"]],
            created=data["created"],
            complete=data["complete"],
            etc_dirs=list(data.get("etc_dirs", ())),
            warm=bool(data.get("warm", False)),
            agents={node: _process(p) for node, p in data.get("agents", {}).items()},
            agent_code=dict(data.get("agent_code", {})),
        )


def _process(data: dict[str, Any]) -> ProcessRecord:
    return ProcessRecord(**{**data, "argv": tuple(data["argv"])})


@dataclass(frozen=True, kw_only=True)
class StateStore:
    """Where one lab's state lives: `<state dir>/<prefix>lab.json`, one lab per prefix."""

    prefix: str
    directory: Path

    @classmethod
    def from_env(cls) -> StateStore:
        return cls(prefix=prefix_from_env(), directory=state_dir_from_env())

    @property
    def path(self) -> Path:
        return self.directory / f"{self.prefix}lab.json"

    def log_path(self, name: str) -> Path:
        return self.directory / f"{self.prefix}{name}.log"

    def socket_path(self, node: str) -> Path:
        """Where the warm capture agent of `node` listens (tracer.cluster.lab.agents)."""
        return self.directory / f"{self.prefix}agents" / f"{node}.sock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lab's lock: for a load, change and save that another tracer may do at the
        same time (a follow restarting a warm agent while another starts one)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{self.prefix}lab.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self) -> LabState | None:
        try:
            return LabState.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def save(self, state: LabState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_dict(), indent=2))
        tmp.replace(self.path)

    def remove(self, state: LabState) -> None:
        for proc in [*state.processes, *state.agents.values()]:
            Path(proc.log).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.directory / f"{self.prefix}agents").rmdir()
        self.path.unlink(missing_ok=True)
        (self.directory / f"{self.prefix}lab.lock").unlink(missing_ok=True)


def process_start_time(pid: int) -> int | None:
    """Start time of a running process, None when there is none (or only a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces; fields after its closing paren are plain.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def stop_process(proc: ProcessRecord, *, timeout: float = 5.0) -> None:
    """End a process the lab started, by PID (SIGTERM, then SIGKILL to its session)."""
    if not proc.alive():
        return
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not proc.alive():
            return
        time.sleep(0.02)
    # It was started in its own session: its process group holds only what it forked.
    os.killpg(proc.pid, signal.SIGKILL)
    _reap(proc.pid)


def start_process(ns: str, log_path: Path, argv: Sequence[str], what: str) -> ProcessRecord:
    """A server process of the lab's (a pod's, a node's agent), in the namespace `ns`, in a
    session of its own, its output in `log_path`."""
    argv = netns.exec_argv(ns, argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    start = process_start_time(proc.pid)
    if start is None:
        raise LabError(f"{what} in {ns} exited at once", hint=f"see {log_path}")
    return ProcessRecord(pid=proc.pid, start_time=start, netns=ns, argv=tuple(argv), log=str(log_path))


def log_tail(path: str, lines: int = 3) -> str:
    """The last lines of a process's log, joined into one (for an error's hint)."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
