"""Thin helpers around `ip`, `bridge` and `ip netns exec`: the only place the lab runs them.

Every command names its network namespace: the lab never changes the root namespace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from tracer.errors import LabError

NETNS_DIR = Path("/run/netns")


def run(argv: Sequence[str], *, input: str | None = None, what: str | None = None) -> str:
    """Run a command, return its stdout; a failure becomes a LabError naming the command."""
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]} not found", hint="install iproute2") from e
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(
            f"{what or ' '.join(argv)} failed: {detail[-1] if detail else f'exit {proc.returncode}'}",
            hint=_failed_batch_hint(input, proc.stderr),
        )
    return proc.stdout


def _failed_batch_hint(batch: str | None, stderr: str) -> str | None:
    # `ip -batch` reports "Command failed -:N"; name the line so the cause is visible.
    if not batch or "-:" not in stderr:
        return None
    try:
        lineno = int(stderr.rsplit("-:", 1)[1].split()[0])
    except (ValueError, IndexError):
        return None
    lines = batch.splitlines()
    return f"the failing command was: {lines[lineno - 1]}" if 0 < lineno <= len(lines) else None


def batch(netns: str | None, lines: Iterable[str], *, tool: str = "ip") -> None:
    """Run many `ip` (or `bridge`) commands in one process, in one namespace."""
    text = "\n".join(lines)
    if not text:
        return
    where = ["-n", netns] if netns else []
    run([tool, *where, "-batch", "-"], input=text + "\n", what=f"{tool} in {netns or 'root namespace'}")


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def with_prefix(prefix: str) -> list[str]:
    """Names of existing namespaces that start with `prefix`."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add(names: Sequence[str]) -> None:
    batch(None, (f"netns add {n}" for n in names))


def delete(names: Sequence[str]) -> None:
    """Delete the namespaces that still exist (their links go with them)."""
    batch(None, (f"netns del {n}" for n in names if exists(n)))


def sysctl(netns: str, values: dict[str, str | int]) -> None:
    """Write sysctls inside a namespace (one process for all of them)."""
    if values:
        run(exec_argv(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]))


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]
