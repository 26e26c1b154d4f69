"""The lab's warm capture agents: one `agent.py --serve` per node, from `lab up` to `lab down`.

Each node's agent server runs in the node's namespace, in a session of its own, recorded in the
lab's state like the pods' servers (so `lab down` ends it by PID, and nothing else). It listens
on `<state dir>/<prefix>agents/<node>.sock` (root's only); a follow connects there instead of
starting an interpreter and importing scapy: the server forks it a ready agent
(capture-pod/agent.py, "Warm"). The state's `warm` says whether the lab keeps them: a follow
then starts one that is not running (`ensure`), as the first follow after `lab up --no-agents`
and `tracer agents install` would, and one that runs an older agent.py than this tracer's (the
state records each server's code digest) is ended and started anew.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tracer.errors import LabError
from tracer.cluster.lab.state import LabState, ProcessRecord, StateStore, log_tail, start_process, stop_process
from tracer.cluster.lab.topology import Names

AGENT = Path(__file__).resolve().parents[3] / "capture-pod" / "agent.py"
READY_TIMEOUT = 20.0
"""Seconds a starting server gets to listen (its Python's start and scapy's import: ~0.4 s, more
on a busy machine)."""
SOCKET_PATH_MAX = 107  # sun_path's 108 bytes, one for the NUL


def running(state: LabState) -> dict[str, ProcessRecord]:
    """The nodes whose warm agent is alive (by PID and start time)."""
    return {node: p for node, p in state.agents.items() if p.alive()}


def current(state: LabState) -> dict[str, ProcessRecord]:
    """The nodes whose warm agent is alive and runs this tracer's agent.py (not an older one,
    started before tracer was updated: it may not know today's arguments)."""
    code = agent_digest()
    return {node: p for node, p in running(state).items() if state.agent_code.get(node) == code}


_DIGEST: list[str] = []


def agent_digest() -> str:
    """sha256 of capture-pod/agent.py, read once per process."""
    if not _DIGEST:
        _DIGEST.append(hashlib.sha256(AGENT.read_bytes()).hexdigest()[:16])
    return _DIGEST[0]


def start(state: LabState, store: StateStore, nodes: Iterable[str] | None = None, *,
          progress: Callable[[str], None] = lambda _: None, wait: bool = True) -> list[str]:
    """Start the warm agent of each node (all by default) that has none running, record it, and
    (unless not `wait`: then `wait_listening`) wait until each listens; the nodes started. The
    caller holds `store.locked()` unless it is `up` (which no other tracer sees yet)."""
    names = Names(prefix=state.prefix)
    wanted = [n.name for n in state.topology.nodes] if nodes is None else list(nodes)
    alive = current(state)
    todo = [n for n in wanted if n not in alive]
    if not todo:
        return []
    progress("starting the warm capture agents on " + ", ".join(todo))
    for node in todo:
        if node in state.agents:  # dead, or of older code: ended first (by PID, if alive)
            stop_process(state.agents.pop(node))
            state.agent_code.pop(node, None)
        path = store.socket_path(node)
        if len(str(path).encode()) > SOCKET_PATH_MAX:
            raise LabError(f"the warm agent's socket path {path} is longer than a Unix socket takes",
                           hint="use a shorter TRACER_STATE_DIR or TRACER_LAB_PREFIX")
        path.unlink(missing_ok=True)  # a dead server's (its PID is not alive, see running())
        state.agents[node] = start_process(names.netns(node), store.log_path(f"agent-{node}"),
                                           [sys.executable, str(AGENT), "--serve", str(path)],
                                           f"the capture agent of node {node}")
        state.agent_code[node] = agent_digest()
        store.save(state)  # journal first: `down` ends it whatever happens next
    if wait:
        wait_listening(state, store, todo)
    return todo


def wait_listening(state: LabState, store: StateStore, nodes: Iterable[str] | None = None) -> None:
    """Until the warm agent of each node (all by default) listens; LabError if one exits first."""
    deadline = time.monotonic() + READY_TIMEOUT
    for node in sorted(state.agents) if nodes is None else nodes:
        _wait_listening(node, store.socket_path(node), state.agents[node], deadline)


def stop(state: LabState, store: StateStore) -> list[str]:
    """End every warm agent of the lab (SIGTERM by PID: each ends the agents it forked, after
    they sent their pcaps); the nodes whose agent was running."""
    ended = []
    for node, proc in sorted(state.agents.items()):
        if proc.alive():
            ended.append(node)
        stop_process(proc)
        store.socket_path(node).unlink(missing_ok=True)
        Path(proc.log).unlink(missing_ok=True)
    state.agents.clear()
    state.agent_code.clear()
    return ended


def ensure(store: StateStore, node: str) -> Path | None:
    """The socket of `node`'s warm agent, started if the lab keeps warm agents and it is not
    running (or runs older code); None if the lab keeps none. (The state is read anew: another
    tracer may have changed it since this one loaded the lab.)"""
    state = store.load()
    if state is None or not state.warm:
        return None
    if node in current(state):
        return store.socket_path(node)
    with store.locked():
        state = store.load()  # (another tracer may have started it meanwhile)
        if state is None or not state.warm:
            return None
        start(state, store, [node])
    return store.socket_path(node)


def connect(path: Path) -> socket.socket | None:
    """A connection to a warm agent (the server has forked it an agent in standby); None if no
    server listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _wait_listening(node: str, path: Path, proc: ProcessRecord, deadline: float) -> None:
    while not path.exists():
        if not proc.alive():
            raise LabError(f"the warm capture agent of node {node} exited", hint=f"see {proc.log}: {log_tail(proc.log)}")
        if time.monotonic() > deadline:
            raise LabError(f"the warm capture agent of node {node} does not listen after {READY_TIMEOUT:.0f} s",
                           hint=f"see {proc.log}")
        time.sleep(0.01)

