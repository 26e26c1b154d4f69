"""`tracer follow`'s orchestration, the same for every backend (lab, Kubernetes).

resolve the pods and their way (tracer.cluster.discover.readers) -> one capture agent per node of the way,
each sniffing exactly that node's points with a kernel filter for this flow -> every agent
listening -> curl from the source pod -> stop, drain, collect -> `<node>/<interface>.pcap` +
path.json in a run directory -> the analysis `tracer analyze` shows (tracer.app.analyze).

Whatever happens (an error, Ctrl-C, SIGTERM at any moment), `CaptureSession.close()` and the
backend's `close()` remove what the run started; the run directory goes too unless --save.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tracer.cluster.discover import discover
from tracer.cluster.filters import capture_plan
from tracer.errors import NotFoundError, UsageError
from tracer.cluster.agents import AgentClient, PointCapture, agent_argv
from tracer.cluster.ports import ExecResult, FollowBackend
from tracer.app.signals import uninterrupted
from tracer.model import Way

Progress = Callable[[str | None], None]
"""Told what the run is doing; None when it is done (the view comes next)."""
CURL_ERRORS = {
    6: "could not resolve the host", 7: "could not connect (refused or no route)", 28: "timed out",
    52: "empty reply from the server", 56: "the connection was reset",
}


@dataclass(frozen=True, kw_only=True)
class FollowRequest:
    """What `tracer follow SRC DST` was asked to do."""

    src: str
    dst: str
    port: int = 80
    path: str = "/get"
    count: int = 1
    timeout: float = 10.0
    """Seconds each step may take: agents getting ready, each request, collecting."""
    save: str | None = None
    """Keep the captures and path.json here (the layout `tracer analyze DIR` reads)."""
    output: str = "text"
    pcapng: str | None = None
    all_flows: bool = False
    """Show every flow of the captures, not only the connections this run's curl made."""
    max_seconds: float = 300.0
    """The agents stop by themselves after this long, whatever happens to tracer."""
    run_id: str | None = None
    """Names the run's agents (and capture pods); random when not given."""


@dataclass(frozen=True, kw_only=True)
class CurlResult:
    """One request fired from the source pod."""

    status: int | None
    """HTTP status, None when there was no HTTP answer."""
    time: float | None
    """curl's time_total in seconds."""
    exit_code: int
    error: str | None = None
    local_port: int | None = None
    """The source port curl's connection used: its flow is `<src ip>:<local_port>`. None when
    curl got no connection."""


@dataclass(kw_only=True)
class Timings:
    """Seconds spent in each phase (the benchmark's breakdown)."""

    discover: float = 0.0
    agents_ready: float = 0.0
    request: float = 0.0
    collect: float = 0.0
    correlate: float = 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - t)


@dataclass(kw_only=True)
class FollowResult:
    way: Way
    run_id: str
    backend: str
    url: str
    directory: Path
    curls: list[CurlResult] = field(default_factory=list)
    captures: dict[str, PointCapture] = field(default_factory=dict)
    """Point id (node/interface) -> what its agent captured."""
    timings: Timings = field(default_factory=Timings)


# --- signals: in tracer.app.signals (light: the commands take them before importing this) ----

# --- the session: agents on every node -----------------------------------------------------------

class CaptureSession:
    """One capture agent per node of the way; `close()` (also on any error) ends them all."""

    def __init__(self, backend: FollowBackend, way: Way, port: int, *, run_id: str | None = None,
                 stream: bool = False, max_seconds: float = 300.0):
        self.backend = backend
        self.way = way
        self.run_id = run_id or f"tracer-{os.urandom(4).hex()}"
        self.plan = capture_plan(way, port)
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


# --- the request -------------------------------------------------------------------------------

def curl_argv(url: str, max_time: float) -> list[str]:
    return ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{local_port}", "--max-time", f"{max_time:g}", url]


def fire(backend: FollowBackend, way: Way, url: str, max_time: float) -> CurlResult:
    """One request from the source pod with its own curl."""
    res = backend.exec_pod(way.src.pod, curl_argv(url, max_time))
    if _no_curl(res):
        raise NotFoundError(
            f"pod {way.src.pod.name} has no curl to send the request with",
            hint="follow from a pod whose image has curl (e.g. curlimages/curl), or add one with kubectl debug",
        )
    words = res.stdout.decode(errors="replace").split()
    status = int(words[0]) if words and words[0].isdigit() and words[0] != "000" else None
    took = float(words[1]) if len(words) > 1 and _is_float(words[1]) else None
    port = int(words[2]) if len(words) > 2 and words[2].isdigit() and words[2] != "0" else None
    error = None
    if res.returncode != 0:
        error = CURL_ERRORS.get(res.returncode) or (res.stderr.decode(errors="replace").strip()[-200:]
                                                     or f"curl exited with {res.returncode}")
    return CurlResult(status=status, time=took, exit_code=res.returncode, error=error, local_port=port)


def _no_curl(res: ExecResult) -> bool:
    err = res.stderr.decode(errors="replace").lower()
    if res.returncode in (126, 127):
        return True
    return not res.stdout and ("curl" in err and ("not found" in err or "no such file" in err))


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# --- the whole run -----------------------------------------------------------------------------

def capture(backend: FollowBackend, req: FollowRequest, directory: Path, progress: Progress) -> FollowResult:
    """Everything up to the captures on disk. On failure it ends the agents; on success they end
    by themselves, and the caller's backend.close() reaps them (after the analysis)."""
    timings = Timings()
    if req.src == req.dst:
        raise UsageError(f"source and destination are the same pod ({req.src})", hint="follow a request between two pods")
    with timings.phase("discover"):
        progress(f"finding the way from {req.src} to {req.dst}")
        way = discover(backend, req.src, req.dst)
    url = f"http://{way.dst.pod.ip}:{req.port}{req.path}"
    session = CaptureSession(backend, way, req.port, run_id=req.run_id, max_seconds=req.max_seconds)
    result = FollowResult(way=way, run_id=session.run_id, backend=backend.name, url=url, directory=directory,
                          timings=timings)
    try:
        with timings.phase("agents_ready"):
            progress(f"starting capture agents on {', '.join(session.plan)}")
            session.start(req.timeout)
        with timings.phase("request"):
            for i in range(req.count):
                progress(f"curl {url}" + (f" ({i + 1}/{req.count})" if req.count > 1 else ""))
                result.curls.append(fire(backend, way, url, req.timeout))
        with timings.phase("collect"):
            progress("collecting the captures")
            result.captures = session.stop_and_collect(req.timeout)
            write_run_dir(directory, way, result.captures)
    except BaseException:
        with uninterrupted():
            session.close()
        raise
    # Done: the agents exit by themselves now; the caller's backend.close() reaps them later.
    session.hang_up()
    return result


def write_run_dir(directory: Path, way: Way, captures: dict[str, PointCapture]) -> None:
    """`<node>/<interface>.pcap` per point and path.json: what `tracer analyze DIR` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    for point_id, cap in captures.items():
        node, iface = point_id.split("/", 1)
        (directory / node).mkdir(exist_ok=True)
        (directory / node / f"{iface}.pcap").write_bytes(cap.pcap)
    # (the agents listened on every point before the request and until its end: analyze may
    # take a point that saw nothing of a packet as one it did not pass)
    doc = {**way.to_dict(), "captured_together": True}
    (directory / "path.json").write_text(json.dumps(doc, indent=2) + "\n")


def check_save_dir(path: str | None) -> None:
    if path and os.path.isdir(path) and os.listdir(path):
        raise UsageError(f"--save {path}: the directory is not empty",
                         hint="give a new or empty directory: `tracer analyze DIR` reads every capture in it")


def run(backend: FollowBackend, req: FollowRequest, *, out: TextIO, progress: Progress = lambda _: None,
        timings_file: str | None = None) -> FollowResult:
    """The whole `tracer follow`: capture, then show it as `tracer analyze` would."""
    check_save_dir(req.save)
    _preload_view()
    tmp = None if req.save else tempfile.mkdtemp(prefix="tracer-follow-")
    directory = Path(req.save or tmp)
    try:
        result = capture(backend, req, directory, progress)
        with result.timings.phase("correlate"):
            from tracer.app.analyze import AnalyzeRequest, run_analysis

            progress("correlating")
            way = result.way
            names = {way.src.pod.ip: way.src.pod.name, way.dst.pod.ip: way.dst.pod.name}
            areq = AnalyzeRequest(paths=(str(directory),), way=tuple(p.id for p in way.points), names=names,
                                  output=req.output, pcapng=req.pcapng,
                                  flows=() if req.all_flows else own_flows(result), all_flows=req.all_flows,
                                  captured_together=True)  # (every agent listened before curl, until its end)
            progress(None)
            run_analysis(areq, out, extra_json={"follow": follow_json(result, req)}, header=header(result, req))
    finally:
        with uninterrupted():
            backend.close()  # reaps the agents (and, on Kubernetes, deletes the capture pods)
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    if timings_file:
        Path(timings_file).write_text(json.dumps(asdict(result.timings)) + "\n")
    return result


def _preload_view() -> None:
    """Import what shows the captures (rich, the correlator: ~50 ms) in a thread, while the
    run mostly waits for processes (discovery's commands, the agents, curl)."""
    import importlib
    import threading

    def load() -> None:
        for name in ("tracer.app.analyze", "tracer.render.hops"):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the real import, later, reports it
                return

    threading.Thread(target=load, name="tracer-preload", daemon=True).start()


def own_flows(r: FollowResult) -> tuple[str, ...]:
    """The run's own connections, as `--flow` specs (`<src ip>:<curl's local port>`).

    The captures can hold other connections between the two pods too (a late packet of one that
    ended just before, another client in the same pod); the view and the JSON show the ones this
    run fired. When a curl got no connection (refused, timed out) its packets have no known port:
    then nothing is singled out and the selection is `analyze`'s default.
    """
    ports = [c.local_port for c in r.curls]
    if not ports or None in ports:
        return ()
    return tuple(f"{r.way.src.pod.ip}:{p}" for p in ports)


# --- what is shown next to the analysis ----------------------------------------------------------

def follow_json(r: FollowResult, req: FollowRequest) -> dict[str, Any]:
    s, d = r.way.src.pod, r.way.dst.pod
    return {
        "backend": r.backend,
        "run_id": r.run_id,
        "src": {"name": s.name, "namespace": s.namespace, "node": s.node, "ip": s.ip},
        "dst": {"name": d.name, "namespace": d.namespace, "node": d.node, "ip": d.ip},
        "url": r.url,
        "curl": [asdict(c) for c in r.curls],
        "captures": [{"point": p, "packets": c.packets, "dropped": c.dropped} for p, c in r.captures.items()],
        "saved": req.save,
        "timings": asdict(r.timings),
    }


def curl_text(c: CurlResult) -> str:
    took = f" in {c.time * 1000:.1f} ms" if c.time is not None else ""
    if c.exit_code == 0 and c.status is not None:
        return f"HTTP {c.status}{took}"
    return f"failed: {c.error}" + (f" (HTTP {c.status})" if c.status else "") + took


def header(r: FollowResult, req: FollowRequest):
    from rich.console import Group
    from rich.text import Text

    from tracer.render.hops import safe

    s, d = r.way.src.pod, r.way.dst.pod
    lines = [Text(f"follow {safe(s.name)} ({s.ip}, {safe(s.node)}) -> {safe(d.name)} ({d.ip}, {safe(d.node)}): "
                  f"GET {safe(r.url)}  [{r.backend}]", style="bold")]
    for i, c in enumerate(r.curls, 1):
        ok = c.exit_code == 0 and c.status is not None and c.status < 400
        lines.append(Text(f"  request {i}: {curl_text(c)}", style="green" if ok else "red"))
    frames = sum(c.packets for c in r.captures.values())
    dropped = sum(c.dropped for c in r.captures.values())
    what = f"  captured {frames} frames at {len(r.captures)} points"
    if dropped:
        what += f", {dropped} dropped by the kernel (the agent could not keep up)"
    lines.append(Text(what, style="yellow" if dropped else "dim"))
    if r.way.same_node:
        lines.append(Text(f"  both pods run on {safe(s.node)}: no tunnel, the way is their two veths", style="yellow"))
    if req.save:
        lines.append(Text(f"  saved to {safe(req.save)} (tracer analyze {safe(req.save)})", style="dim", no_wrap=True))
    lines.append(Text(""))
    return Group(*lines)
