"""`tracer follow`'s orchestration, the same for every backend (lab, Kubernetes).

resolve the pods and their way (tracer.cluster.discover) -> one capture agent per node of the
way, each sniffing exactly that node's points with a kernel filter for this flow
(tracer.cluster.session) -> every agent listening -> curl from the source pod (tracer.app.curl)
-> stop, drain, collect -> `<node>/<interface>.pcap` + path.json in a run directory -> the
analysis `tracer analyze` makes of it (tracer.app.analyze), handed to the caller to show.

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
from typing import TYPE_CHECKING

from tracer.app.curl import fire
from tracer.app.signals import uninterrupted
from tracer.app.target import DnsWay, dns_document, endpoint_documents, request_way
from tracer.cluster.agents import PointCapture
from tracer.cluster.ports import FollowBackend
from tracer.cluster.session import CaptureSession
from tracer.errors import ExitCode, UsageError
from tracer.model import Way
from tracer.model.follow import CurlResult, FollowRun, PointCount

if TYPE_CHECKING:
    from tracer.model.analysis import Analysis

Progress = Callable[[str | None], None]
"""Told what the run is doing; None when it is done (the view comes next)."""


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
    view: str | None = None
    """The text view: hops, grid or summary (None: hops, the summary for many packets)."""
    points: tuple[str, ...] = ()
    """NODE/IFACE to capture on as well (--point; on a way tracer does not know, its middle)."""


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
    interrupted: bool = False
    """Ctrl-C (or SIGTERM) came while the requests ran: what was captured until then is kept and
    shown, and the caller ends the run as interrupted after that."""
    save_error: str | None = None
    """--save's directory could not take the captures after the run (the disk full, the
    directory gone): what failed. The run is shown all the same, from a temporary directory."""
    dns: DnsWay | None = None
    """The way of the DNS query a URL by name makes, captured too."""
    others: tuple[Way, ...] = ()
    """The ways to a Service's other endpoints (kube-proxy picks one per connection), captured too."""

    def as_run(self, saved: str | None) -> FollowRun:
        """The run as the model has it (what its header and JSON show), as it is now."""
        return FollowRun(way=self.way, run_id=self.run_id, backend=self.backend, url=self.url, curls=tuple(self.curls),
                         captures=tuple(PointCount(point=p, packets=c.packets, dropped=c.dropped, offloads=c.offloads)
                                        for p, c in self.captures.items()),
                         saved=None if self.save_error else saved, timings=asdict(self.timings),
                         interrupted=self.interrupted, save_error=self.save_error)


# --- the whole run -----------------------------------------------------------------------------

def capture(backend: FollowBackend, req: FollowRequest, directory: Path, progress: Progress) -> FollowResult:
    """Everything up to the captures on disk. On failure it ends the agents; on success they end
    by themselves, and the caller's backend.close() reaps them (after the analysis)."""
    timings = Timings()
    if req.src == req.dst:
        raise UsageError(f"source and destination are the same pod ({req.src})", hint="follow a request between two pods")
    with timings.phase("discover"):
        progress(f"finding the way from {req.src} to {req.dst}")
        to = request_way(backend, req.src, req.dst, req.port, req.path, req.points)
    way, url = to.way, to.url
    session = CaptureSession(backend, way, to.port, run_id=req.run_id, max_seconds=req.max_seconds,
                             dns=to.dns.ways if to.dns else None, dns_ip=to.dns.service.cluster_ip if to.dns else "",
                             others=to.others)
    result = FollowResult(way=way, run_id=session.run_id, backend=backend.name, url=url, directory=directory,
                          timings=timings, dns=to.dns, others=to.others)
    try:
        with timings.phase("agents_ready"):
            progress(f"starting capture agents on {', '.join(session.plan)}")
            session.start(req.timeout)
        try:
            with timings.phase("request"):
                for i in range(req.count):
                    progress(f"curl {url}" + (f" ({i + 1}/{req.count})" if req.count > 1 else ""))
                    result.curls.append(fire(backend, way, url, req.timeout))
        except KeyboardInterrupt:
            # Every agent listens: what it has is worth showing (a request that hangs is what one
            # interrupts). The request in flight is ended (its curl with it); a second Ctrl-C
            # while collecting ends the run at once, as before.
            result.interrupted = True
            if len(result.curls) < req.count:
                result.curls.append(CurlResult(status=None, time=None, exit_code=int(ExitCode.INTERRUPTED),
                                               error="interrupted (Ctrl-C): shown as far as it got"))
        with timings.phase("collect"):
            progress("interrupted: collecting what was captured so far (Ctrl-C again to quit)" if result.interrupted
                     else "collecting the captures")
            result.captures = session.stop_and_collect(req.timeout)
            try:
                write_run_dir(directory, way, result.captures, result.dns, result.others)
            except OSError as e:
                if not req.save:
                    raise
                result.save_error = (f"--save {req.save}: could not write the captures ({e.strerror or e}); what is "
                                     "there is incomplete")
    except BaseException:
        with uninterrupted():
            session.close()
        raise
    # Done: the agents exit by themselves now; the caller's backend.close() reaps them later.
    session.hang_up()
    return result


def write_run_dir(directory: Path, way: Way, captures: dict[str, PointCapture], dns: DnsWay | None = None,
                  others: tuple[Way, ...] = ()) -> None:
    """`<node>/<interface>.pcap` per point and path.json: what `tracer analyze DIR` reads (with
    `dns`, its `dns` key: the DNS query's way and the Service it asked; with `others`, its
    `endpoints`: the ways to a Service's other endpoints)."""
    directory.mkdir(parents=True, exist_ok=True)
    for point_id, cap in captures.items():
        node, iface = point_id.split("/", 1)
        (directory / node).mkdir(exist_ok=True)
        (directory / node / f"{iface}.pcap").write_bytes(cap.pcap)
    # (the agents listened on every point before the request and until its end: analyze may
    # take a point that saw nothing of a packet as one it did not pass)
    doc = {**way.to_dict(), "captured_together": True,
           "offloads": {p: dict(c.offloads) for p, c in captures.items() if c.offloads}}
    if dns is not None:
        doc["dns"] = dns_document(dns)
    if others:
        doc["endpoints"] = endpoint_documents(others)
    (directory / "path.json").write_text(json.dumps(doc, indent=2) + "\n")


def prepare_save_dir(path: str | None) -> None:
    """Make sure --save's directory can take the captures, before any capture runs (creating it
    if need be)."""
    if not path:
        return
    if os.path.isdir(path):
        if os.listdir(path):
            raise UsageError(f"--save {path}: the directory is not empty",
                             hint="give a new or empty directory: `tracer analyze DIR` reads every capture in it")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--save {path}: the directory is not writable", hint="give a directory you can write to")
        return
    try:
        os.makedirs(path)
    except OSError as e:
        raise UsageError(f"--save {path}: cannot create the directory ({e.strerror})",
                         hint="give a new directory in a place you can write to") from None


def follow(backend: FollowBackend, req: FollowRequest, *, present: Callable[[FollowRun, Analysis], None],
           progress: Progress = lambda _: None) -> FollowResult:
    """The whole `tracer follow`: capture, analyze as `tracer analyze` would, and hand the run and
    its analysis to `present` (to show them) before everything the run started is removed."""
    # The directories are named before the `try` and made inside it: a Ctrl-C at any moment
    # finds in `finally` whatever was made (mkdtemp's name would reach us only after it had made it).
    creates = bool(req.save) and not os.path.isdir(req.save)
    tmp = None if req.save else os.path.join(tempfile.gettempdir(), f"tracer-follow-{os.urandom(6).hex()}")
    directory = Path(req.save or tmp)
    done = False
    try:
        prepare_save_dir(req.save)
        if tmp:
            os.mkdir(tmp, 0o700)
        result = capture(backend, req, directory, progress)
        if result.save_error:  # (shown from a directory of our own; what --save's holds is incomplete)
            tmp = os.path.join(tempfile.gettempdir(), f"tracer-follow-{os.urandom(6).hex()}")
            os.mkdir(tmp, 0o700)
            directory = Path(tmp)
            write_run_dir(directory, result.way, result.captures, result.dns, result.others)
        with result.timings.phase("correlate"):
            from tracer.app.analyze import AnalyzeRequest, analyze
            from tracer.correlate.engine import no_cyclic_gc

            progress("correlating")
            way = result.way
            names = {way.src.pod.ip: way.src.pod.name, way.dst.pod.ip: way.dst.pod.name}
            more = (*result.others, *(result.dns.ways if result.dns else ()))
            for w in more:
                names[w.dst.pod.ip] = w.dst.pod.name
            areq = AnalyzeRequest(paths=(str(directory),), way=tuple(p.id for p in way.points),
                                  other_ways=tuple(tuple(p.id for p in w.points) for w in more),
                                  way_ends=tuple(w.dst.pod.ip for w in (way, *more)),
                                  blind=tuple(p.id for p in way.points if p.bypass), names=names,
                                  output=req.output, pcapng=req.pcapng,
                                  flows=() if req.all_flows else own_flows(result), all_flows=req.all_flows, related_arp=True,
                                  view=req.view, summary=req.view == "summary",
                                  captured_together=True,  # (every agent listened before curl, until its end)
                                  offloads={p: dict(c.offloads) for p, c in result.captures.items() if c.offloads})
            so_far = result.as_run(req.save)  # (the JSON's timings: up to the correlation)
            progress(None)
            with no_cyclic_gc():
                present(so_far, analyze(areq))
        done = True
    finally:
        with uninterrupted():
            backend.close()  # reaps the agents (and, on Kubernetes, deletes the capture pods)
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            elif creates and not done and directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()  # (made for a run that captured nothing: not left behind)
    return result


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
    dns = (f"{r.dns.service.cluster_ip}:53",) if r.dns else ()  # (the name's lookup: by the Service it asked)
    return tuple(f"{r.way.src.pod.ip}:{p}" for p in ports) + dns
