"""`tracer follow --live` / `tracer watch`: a request every second, each packet lighting up hop by hop.

The agents run in streaming mode (`--stream`): every frame they capture comes over at once as a
`frame` event. Each is decoded (tracer.decode) to its inner packet, whose identity (addresses,
ports, TCP seq/ack/flags, payload length) is the same at every point; the table has one row per
packet and one column per point of the way, and a cell lights up when the packet is seen there,
marked with what changed since the previous point: encapsulation, decapsulation, MAC rewrite, TTL.
Made for a projector: big marks, few words, the newest requests only.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tracer.correlate.engine import HTTP_STARTS
from tracer.decode import Frame, decode, fmt_ip, tcp_flags_str
from tracer.cluster.discover import discover
from tracer.model import Way
from tracer.errors import UsageError
from tracer.cluster.agents import AgentClient, AgentError
from tracer.cluster.ports import FollowBackend
from tracer.app.follow import CaptureSession, CurlResult, FollowRequest, curl_text, fire, uninterrupted
from tracer.render.hops import safe
from tracer.correlate.describe import FLAG_WORDS, PROTO_NAMES

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


@dataclass
class LiveState:
    """Everything the live view shows; fed with frames and curl results, rendered by `view`."""

    way: Way
    packets: dict[tuple, LivePacket] = field(default_factory=dict)
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
        key = (src, dst, fr.sport, fr.dport, fr.tcp_seq, fr.tcp_ack, fr.tcp_flags, fr.payload_len)
        pkt = self.packets.get(key)
        if pkt is None:
            if dst not in (client_ip, self.way.dst.pod.ip):
                return
            pkt = self.packets[key] = LivePacket(summary=packet_label(fr), request=request, conversation=conv)
            if conv not in self.conversations:
                self.conversations.append(conv)
        pkt.seen.setdefault(point, fr)


def packet_label(fr: Frame) -> str:
    """`SYN`, `PSH-ACK GET /get`, `PSH-ACK HTTP/1.1 200`: short enough for a projector."""
    flags = tcp_flags_str(fr.tcp_flags)
    text = FLAG_WORDS.get(flags, flags or PROTO_NAMES.get(fr.proto, "?").upper())
    if fr.payload_len:
        line = fr.data[fr.payload_offset:fr.payload_offset + 40].split(b"\r\n", 1)[0] if fr.payload_offset >= 0 else b""
        if line.startswith(HTTP_STARTS):
            text += " " + " ".join(line.decode("ascii", "replace").split()[:2])
        else:
            text += f" {fr.payload_len}B"
    return text


def cell(fr: Frame, prev: Frame | None) -> Text:
    """A lit cell: what changed here against the previous point the packet passed.

    `⊕4096` encapsulated (VXLAN VNI), `⊖` decapsulated, `M` MAC rewritten, then the TTL
    (yellow where routing took one off).
    """
    t = Text()
    if fr.tunnels and (prev is None or not prev.tunnels):
        tun = fr.tunnels[-1]
        t.append(f"⊕{tun.vni if tun.vni is not None else tun.type} ", style="bold magenta")
    elif prev is not None and prev.tunnels and not fr.tunnels:
        t.append("⊖ ", style="bold magenta")
    if prev is not None and fr.eth_src and prev.eth_src and (fr.eth_src, fr.eth_dst) != (prev.eth_src, prev.eth_dst):
        t.append("M ", style="bold yellow")
    if not t:
        t.append("● ", style="bold green")
    routed = prev is not None and prev.ttl is not None and fr.ttl is not None and fr.ttl < prev.ttl
    t.append(str(fr.ttl), style="bold yellow" if routed else "green")
    return t


def view(state: LiveState, title: str = "") -> Group:
    """The live table: the newest request, one row per packet, one column per point."""
    way = state.way
    points = [p.id for p in way.points]
    t = Table(show_edge=False, pad_edge=False, expand=False)
    t.add_column("packet", no_wrap=True, max_width=20)
    for i, p in enumerate(way.points, 1):
        t.add_column(f"{i} {safe(p.node)}\n{safe(p.interface)}", justify="left", no_wrap=True, min_width=8, max_width=16)
    for conv in state.conversations[-SHOWN_REQUESTS:]:
        for pkt in (p for p in state.packets.values() if p.conversation == conv):
            order = points if pkt.request else points[::-1]
            cells: dict[str, Text] = {}
            prev = None
            for pid in order:
                fr = pkt.seen.get(pid)
                if fr is None:
                    cells[pid] = Text("·", style="dim")
                else:
                    cells[pid], prev = cell(fr, prev), fr
            label = Text("→ " if pkt.request else "← ", style="bold cyan" if pkt.request else "bold blue")
            label.append(safe(pkt.summary))
            t.add_row(label, *(cells[p] for p in points))
    head = Text(title, style="bold")
    if state.curls:
        c = state.curls[-1]
        ok = c.exit_code == 0 and c.status is not None and c.status < 400
        head.append(f"\nrequest {len(state.curls)}: {curl_text(c)}", style="green" if ok else "red")
    src, dst = way.src, way.dst
    legend = Text(f"{safe(src.pod.name)} {src.pod.ip} eth0 {src.mac}  →  {safe(dst.pod.name)} {dst.pod.ip} eth0 {dst.mac}",
                  style="dim")
    if way.tunnel:
        tu = way.tunnel
        legend.append(f"\n{safe(tu.device)} VNI {tu.vni} UDP {tu.udp_port} +50B: {tu.src_node_ip} ↔ {tu.dst_node_ip}",
                      style="dim")
    keys = Text("● seen  ⊕ encapsulated (VNI)  ⊖ decapsulated  M MAC rewritten  N TTL", style="dim")
    parts = [head, legend, t, keys, Text(f"{state.frames} frames captured  ·  Ctrl-C to stop", style="dim")]
    parts += [Text(f"warning: {safe(e)}", style="red") for e in state.errors[-3:]]
    return Group(*parts)


def watch(backend: FollowBackend, req: FollowRequest, *, iterations: int | None = None, interval: float = 1.0,
          console: Console | None = None) -> LiveState:
    """Run until Ctrl-C (or `iterations` requests); everything started is removed at the end."""
    if req.save or req.output != "text" or req.pcapng:
        raise UsageError("--live shows a live view: --save, --output json and --pcapng do not apply",
                         hint="tracer follow without --live saves and prints")
    if req.src == req.dst:
        raise UsageError(f"source and destination are the same pod ({req.src})")
    console = console or Console()
    way = discover(backend, req.src, req.dst)
    url = f"http://{way.dst.pod.ip}:{req.port}{req.path}"
    title = (f"watch {safe(way.src.pod.name)} ({way.src.pod.node}) → {safe(way.dst.pod.name)} ({way.dst.pod.node}): "
             f"GET {safe(url)}  [{backend.name}]")
    state = LiveState(way=way)
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
        with Live(view(state, title), console=console, refresh_per_second=12, transient=False) as live:
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
                live.update(view(state, title))
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
