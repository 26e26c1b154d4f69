"""Shared fixtures: real labs in network namespaces, isolated per test session, always torn down.

Every lab of this session has a namespace prefix `trt<random>-` and keeps its state in a
temporary directory, so parallel runs never collide and nothing else on the machine is touched.
`pytest_sessionfinish` sweeps whatever a crashed test left (only this session's prefix).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracer.cluster.lab import Lab, StateStore, down, exercise, up
from tracer.cluster.lab import netns
from tracer.cluster.lab.kube_proxy import NETNS_ETC
from tracer.cluster.lab.state import stop_process

# What the tests assert is tracer's own output, not the caller's terminal settings or proxies:
# rich honours these (colour forced on pipes, a width), the kubernetes client the proxies (the
# stand-in API server is on 127.0.0.1). Subprocesses inherit the cleaned environment.
for _var in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES",
             "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_var, None)
if os.environ.get("TERM", "dumb") == "dumb":
    os.environ["TERM"] = "xterm"  # (progress lines are off on a dumb terminal; tests look at them)
# A run started in the background by a shell without job control (nohup, `cmd &` in a script)
# begins with Ctrl-C ignored, and every process it starts inherits that: the tests that press
# Ctrl-C on tracer would see nothing happen. Handled here, the children start with it as usual.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SESSION_PREFIX = f"trt{secrets.token_hex(3)}-"
SESSION_STATE_DIR = Path(tempfile.mkdtemp(prefix="tracer-test-state-"))


def make_store(name: str) -> StateStore:
    """A store (prefix + state dir) of its own for one lab of this session."""
    return StateStore(prefix=f"{SESSION_PREFIX}{name}-", directory=SESSION_STATE_DIR)


def store_env(store: StateStore) -> dict[str, str]:
    return {**os.environ, "TRACER_LAB_PREFIX": store.prefix, "TRACER_STATE_DIR": str(store.directory)}


def run_tracer(*args: str, store: StateStore, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a new process, pointed at `store`'s lab."""
    proc = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                          env=store_env(store), timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"tracer {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def ip_json(ns: str, *args: str) -> list[dict]:
    """`ip -j ARGS` inside a namespace, parsed."""
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def ns_run(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True).stdout


def leftovers(store: StateStore) -> list[str]:
    return netns.with_prefix(store.prefix)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The exercise's two-node lab, one per test module, removed even when a test fails."""
    store = make_store("m" + secrets.token_hex(2))
    built = up(exercise(), store=store)
    try:
        yield built
    finally:
        down(store)


@pytest.fixture
def store() -> Iterator[StateStore]:
    """A fresh, unused store for a test that drives up/down itself; swept afterwards."""
    s = make_store("t" + secrets.token_hex(2))
    yield s
    down(s)
    netns.delete(leftovers(s))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Safety sweep: processes and namespaces this session's labs recorded, then any namespace
    # with the session prefix (a lab that crashed before writing its journal).
    for path in SESSION_STATE_DIR.glob("*lab.json"):
        state = StateStore(prefix=path.name.removesuffix("lab.json"), directory=SESSION_STATE_DIR).load()
        for proc in state.processes if state else ():
            stop_process(proc)
    netns.delete(netns.with_prefix(SESSION_PREFIX))
    for etc in NETNS_ETC.glob(SESSION_PREFIX + "*") if NETNS_ETC.is_dir() else ():
        shutil.rmtree(etc, ignore_errors=True)  # (the pods' resolv.conf of a lab that crashed)
    shutil.rmtree(SESSION_STATE_DIR, ignore_errors=True)


@pytest.fixture
def forks(monkeypatch):
    """The files tracer.capture.workers.Workers.read gave to a process of its own (each a real fork)."""
    from tracer.capture.workers import Workers
    started = []
    read = Workers.read

    def counting(self, cap, *args):
        started.append(cap.path)
        return read(self, cap, *args)

    monkeypatch.setattr(Workers, "read", counting)
    return started
