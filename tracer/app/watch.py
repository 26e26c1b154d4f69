"""`tracer follow --live` / `tracer watch`: a request every second, each packet lighting up hop by hop.

The agents run in streaming mode (`--stream`): every frame they capture comes over at once as a
`frame` event. Each is decoded (tracer.decode) to its inner packet and keyed by the packet's
identity, the same one correlation uses (tracer.capture.sightings.identity: what stays the same
at every point, NAT included); each packet is a row with a cell per point of the way, lit when
it is seen there and marked with what changed since the previous point it was seen at
(tracer.correlate.changes.hop_changes, as in analyze's hops). The newest request only.
The view is the caller's: it is handed a LiveSnapshot after every change (tracer.render.live).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tracer.app.curl import fire
from tracer.app.follow import FollowRequest
from tracer.app.signals import uninterrupted
from tracer.capture.sightings import identity
from tracer.cluster.agents import AgentClient, AgentError
from tracer.cluster.discover import discover
from tracer.cluster.ports import FollowBackend
from tracer.cluster.session import CaptureSession
from tracer.correlate.changes import hop_changes, packet_label
from tracer.decode import Frame, decode, fmt_ip
from tracer.errors import UsageError
from tracer.model import Way
from tracer.model.follow import CurlResult, LiveCell, LiveRow, LiveSnapshot

LIVE_MAX_SECONDS = 4 * 3600.0  # agents stop by themselves after a long lesson at the latest
SHOWN_REQUESTS = 1
LIVE_CURL_MAX_TIME = 3.0


@dataclass
class LivePacket:
    """One packet of the traced flow and where it has been seen so far."""

    summary: str
    request: bool
    """client -> server (the request direction) or the response."""
    conversation: tuple
    """The TCP connection (client port): one per request."""
    seen: dict[str, Frame] = field(default_factory=dict)
    """Point id -> the frame as captured there."""

    def cells(self, points: list[str]) -> tuple[LiveCell | None, ...]:
        """Its cell at each point, in the way's order; what changed is judged in the order the
        packet went (the response takes the way backwards)."""
        order = points if self.request else points[::-1]
        cells: dict[str, LiveCell | None] = {}
        prev = None
        for pid in order:
            fr = self.seen.get(pid)
            if fr is None:
                cells[pid] = None
                continue
            changes = () if prev is None else hop_changes(prev, fr)
            tunnel = None
            if "encap" in changes:
                t = fr.tunnels[-1]
                tunnel = str(t.vni if t.vni is not None else t.type)
            cells[pid], prev = LiveCell(changes=changes, ttl=fr.ttl, tunnel=tunnel), fr
        return tuple(cells[p] for p in points)


@dataclass
class LiveState:
    """Everything the live view shows; fed with frames and curl results, read as `snapshot()`."""

    way: Way
    url: str = ""
    backend: str = ""
    packets: dict[object, LivePacket] = field(default_factory=dict)
    conversations: list[tuple] = field(default_factory=list)
    curls: list[CurlResult] = field(default_factory=list)
    frames: int = 0
    errors: list[str] = field(default_factory=list)

    def add_frame(self, point: str, linktype: int, data: bytes) -> None:
        fr = decode(linktype, data)
        if fr.ip_src is None or fr.sport is None:
            return
        self.frames += 1
        src, dst = fmt_ip(fr.ip_src), fmt_ip(fr.ip_dst)
        client_ip = self.way.src.pod.ip
        request = src == client_ip
        client_port = fr.sport if request else fr.dport
        conv = (client_port,)
        key = identity(fr)
        pkt = self.packets.get(key)
        if pkt is None:
            if dst not in (client_ip, self.way.dst.pod.ip):
                return
            pkt = self.packets[key] = LivePacket(summary=packet_label(fr), request=request, conversation=conv)
            if conv not in self.conversations:
                self.conversations.append(conv)
        pkt.seen.setdefault(point, fr)

    def snapshot(self) -> LiveSnapshot:
        points = [p.id for p in self.way.points]
        rows = tuple(LiveRow(summary=pkt.summary, request=pkt.request, cells=pkt.cells(points))
                     for conv in self.conversations[-SHOWN_REQUESTS:]
                     for pkt in self.packets.values() if pkt.conversation == conv)
        return LiveSnapshot(way=self.way, url=self.url, backend=self.backend, rows=rows, requests=len(self.curls),
                            last_curl=self.curls[-1] if self.curls else None, frames=self.frames,
                            errors=tuple(self.errors))


def watch(backend: FollowBackend, req: FollowRequest, *, display: Callable[[LiveSnapshot], None],
          iterations: int | None = None, interval: float = 1.0) -> LiveState:
    """Run until Ctrl-C (or `iterations` requests), handing `display` a snapshot after every change,
    from when every agent listens; everything started is removed at the end."""
    if req.save or req.output != "text" or req.pcapng:
        raise UsageError("--live shows a live view: --save, --output json and --pcapng do not apply",
                         hint="tracer follow without --live saves and prints")
    if req.src == req.dst:
        raise UsageError(f"source and destination are the same pod ({req.src})")
    way = discover(backend, req.src, req.dst)
    url = f"http://{way.dst.pod.ip}:{req.port}{req.path}"
    state = LiveState(way=way, url=url, backend=backend.name)
    events: queue.Queue = queue.Queue()
    session = CaptureSession(backend, way, req.port, run_id=req.run_id, stream=True, max_seconds=LIVE_MAX_SECONDS)
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
