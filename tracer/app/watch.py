"""`tracer follow --live` / `tracer watch`: a request every second, each packet lighting up hop by hop.

The agents run in streaming mode (`--stream`): every frame they capture comes over at once as a
`frame` event, into the live state (tracer.correlate.live: each packet a row, a cell per point
of the way). The view is the caller's: it is handed a LiveSnapshot after every change
(tracer.render.live).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tracer.app.curl import fire
from tracer.app.signals import uninterrupted
from tracer.cluster.agents import AgentClient, AgentError
from tracer.app.target import request_way
from tracer.cluster.ports import FollowBackend
from tracer.cluster.session import CaptureSession
from tracer.correlate.live import LiveState
from tracer.errors import UsageError
from tracer.model.live import LiveSnapshot

LIVE_MAX_SECONDS = 4 * 3600.0  # agents stop by themselves after a long lesson at the latest
LIVE_CURL_MAX_TIME = 3.0


@dataclass(frozen=True, kw_only=True)
class WatchRequest:
    """What `tracer watch SRC DST` (or `tracer follow --live`) was asked to do."""

    src: str
    dst: str
    port: int = 80
    path: str = "/get"
    timeout: float = 10.0
    """Seconds the agents may take to get ready (and each request at most LIVE_CURL_MAX_TIME)."""
    run_id: str | None = None
    """Names the run's agents (and capture pods); random when not given."""
    points: tuple[str, ...] = ()
    """NODE/IFACE to capture on as well (--point)."""


def watch(backend: FollowBackend, req: WatchRequest, *, display: Callable[[LiveSnapshot], None],
          iterations: int | None = None, interval: float = 1.0) -> LiveState:
    """Run until Ctrl-C (or `iterations` requests), handing `display` a snapshot after every change,
    from when every agent listens; everything started is removed at the end."""
    if req.src == req.dst:
        raise UsageError(f"source and destination are the same pod ({req.src})")
    to = request_way(backend, req.src, req.dst, req.port, req.path, req.points)
    way, url = to.way, to.url
    dns_ways = to.dns.ways if to.dns else ()
    dns_ip = to.dns.service.cluster_ip if to.dns else ""
    state = LiveState(way=way, url=url, backend=backend.name, others=to.others, dns=dns_ways, dns_ip=dns_ip)
    events: queue.Queue = queue.Queue()
    # (as follow: the ways to a Service's other endpoints and the DNS lookup's are captured too)
    session = CaptureSession(backend, way, to.port, run_id=req.run_id, stream=True, max_seconds=LIVE_MAX_SECONDS,
                             dns=dns_ways or None, dns_ip=dns_ip, others=to.others)
    requester: threading.Thread | None = None
    try:
        session.start(req.timeout)
        for agent in session.agents:
            threading.Thread(target=_read_frames, args=(agent, events), daemon=True).start()
        max_time = min(req.timeout, LIVE_CURL_MAX_TIME)
        next_at = time.monotonic()
        fired = 0
        done_at = None
        display(state.snapshot())
        while True:
            now = time.monotonic()
            if requester is None or not requester.is_alive():
                if (iterations is None or fired < iterations) and now >= next_at:
                    requester = threading.Thread(target=_request, args=(backend, way, url, max_time, events),
                                                 daemon=True)
                    requester.start()
                    fired += 1
                    next_at = now + interval
                elif iterations is not None and fired >= iterations and len(state.curls) >= iterations:
                    done_at = done_at or now + 0.3  # the last frames of the exchange
            _apply(state, events, timeout=0.05)
            display(state.snapshot())
            if done_at is not None and time.monotonic() >= done_at:
                break
    finally:
        with uninterrupted():
            session.close()
            if requester is not None:
                requester.join(LIVE_CURL_MAX_TIME + 1)
    return state


def _request(backend, way, url, max_time, events: queue.Queue) -> None:
    try:
        events.put(("curl", fire(backend, way, url, max_time)))
    except Exception as e:  # noqa: BLE001 - shown in the view, the lesson goes on
        events.put(("error", getattr(e, "message", str(e))))


def _read_frames(agent: AgentClient, events: queue.Queue) -> None:
    while True:
        try:
            ev = agent.next_event(time.monotonic() + LIVE_MAX_SECONDS, waiting_for="frames")
        except AgentError as e:
            events.put(("error", e.message))
            return
        except (OSError, ValueError):
            return  # the channel was closed: the run is over
        if ev.kind == "frame":
            events.put(("frame", f"{agent.node}/{ev.fields['interface']}", int(ev.fields.get("linktype", 1)), ev.payload))
        elif ev.kind == "done":
            return


def _apply(state: LiveState, events: queue.Queue, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ev = events.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            return
        if ev[0] == "frame":
            state.add_frame(ev[1], ev[2], ev[3])
        elif ev[0] == "curl":
            state.curls.append(ev[1])
        elif ev[0] == "error":
            state.errors.append(ev[1])
