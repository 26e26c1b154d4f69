"""The correlator: find the same packet at every capture point and put its hops in order.

Streaming design. Every capture file is read once, all of them merged by timestamp; a packet's
sightings are gathered under its identity (what stays the same across hops: IP ID, protocol,
TCP seq/ack/flags and payload length, UDP payload; never TTL, checksums, MACs or the NAT-ed
addresses) for `window` seconds of capture time, then the packet is finalized: its hops are put
in the order of its way and it is folded into its flow. In summary mode nothing per packet is
kept after that, so memory follows the number of flows and the packet rate, not the packet count.

Order of the way, not of timestamps. Node clocks differ, so hops are grouped by node; within a
node its own clock orders them; nodes are ordered by the TTL the packet had there (every routing
step takes one), and only where TTL cannot tell, by timestamps corrected with the clock offsets
that the correlator estimates from packets whose order TTL does tell.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import time
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from operator import gt, itemgetter

from tracer.decode import PROTO_TCP, VXLAN_PORTS, Frame, decode
from tracer.capture.fastpath import (
    CALICO_MAC, CODE, FRAME, HEAD, PROTO, TTL, PointStats, from_frame, identity, pcap_sightings,
    split_ends,
)
from tracer.errors import CaptureFileError
from tracer.capture.pcapio import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, open_capture, pcapng_head, resume_records
from tracer.capture.roles import INGRESS_RANK, infer_role, role_from_name
from tracer.capture.workers import Workers

__all__ = ["CALICO_MAC", "HTTP_STARTS", "CaptureInput", "Correlator", "Options", "Sighting", "identity",
           "inputs_from_paths"]
HTTP_STARTS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"HTTP/1.", b"CONNECT ")
EGRESS_RANK = {"pod-veth": 0, "bridge": 1, "tunnel": 2, "underlay": 3, "unknown": 4}
RESERVOIR = 4096
ONE_WAY_MAX = 0.01
"""Seconds the fastest of a flow's crossings from one capture point to the next may take before
(with no traffic the other way to tell) the rest is put down to the nodes' clocks."""
PROGRESS_EVERY = 0.2  # seconds
TIE_HOLD = 65536  # sightings of one instant _merge holds back at most, per stream
_time, _code, _ends = itemgetter(0), itemgetter(CODE), itemgetter(5)
MANY_WAYS = 64


@dataclass(frozen=True, kw_only=True)
class CaptureInput:
    """One capture file and the point it belongs to."""

    path: str
    node: str
    interface: str
    forced: bool = False
    """Given as --point NAME=FILE: every interface in the file is this point."""
    split_node: str | None = None
    """The node whose every interface a `tcpdump -i any` capture in this file holds (frames in
    Linux cooked v2 from more than one interface index): it becomes one point per interface,
    `<split_node>/<interface>`. None: the file is one point whatever it holds."""


@dataclass(frozen=True, kw_only=True)
class Options:
    vxlan_ports: frozenset[int] = VXLAN_PORTS
    window: float = 10.0
    """Seconds of capture time a packet waits for its other sightings (covers clock offsets)."""
    keep_packets: bool = True
    """False: summary mode, per-packet state is dropped once a packet is finalized."""
    way_hint: tuple[str, ...] = ()
    """Point ids of the request way in order (from a saved path.json), if known."""
    pods: frozenset[str] = frozenset()
    """Names of pods whose own interfaces were captured as points `<pod>/<interface>`."""
    fast: bool = True
    """Summary mode: read pcap files of Ethernet frames (and pcapng files of one Ethernet
    interface) with tracer.capture.fastpath's fast path."""
    ifnames: dict[tuple[str, int], str] = field(default_factory=dict)
    """(node, interface index) -> interface name, for the points of `tcpdump -i any` captures
    (else `if<index>`)."""
    jobs: int | None = None
    """Processes reading capture files at once, this one included: 1 reads every file here;
    None: big pcap files (summary mode) each in a process of its own when there is more than
    one CPU (tracer.capture.workers)."""
    captured_together: bool = False
    """Every capture ran over the whole exchange: no packet went by a point not capturing.
    Else a point's node is taken to capture from the first frame of any of its points to the
    last (see _capture_window)."""


class _Point:
    __slots__ = ("id", "node", "interface", "stats", "files", "role")

    def __init__(self, pid: str, node: str, interface: str):
        self.id, self.node, self.interface = pid, node, interface
        self.stats = PointStats()
        self.files: list[str] = []
        self.role = role_from_name(interface) or "unknown"  # refined from traffic at the end

    @property
    def frames(self) -> int:
        return self.stats.frames

    @property
    def undecoded(self) -> int:
        return self.stats.undecoded

    @property
    def ips(self) -> set[bytes]:
        """Inner IPs seen (to tell whose pod veth this is)."""
        return self.stats.ips


class Sighting:
    """One frame of a packet at one point (internal; becomes a model.Hop). Slotted: one per frame."""

    __slots__ = ("point", "time", "frame", "direction")

    def __init__(self, point: int, time: float, frame: Frame, direction: str = "?"):
        self.point = point
        self.time = time
        self.frame = frame
        self.direction = direction


class _Shape:
    """How one packet went: the order of its sightings and what follows from it.

    Packets of the same kind (same points, TTLs and tunnels, seen in the same order) share one
    shape, computed once: that is most of what makes the correlator fast.
    """

    __slots__ = ("perm", "dirs", "steps", "mask", "segs", "tally", "sampler", "pairs", "ties")

    def __init__(self, perm: tuple[int, ...], dirs: tuple[str, ...], steps: list[tuple], obs: list[tuple]):
        self.perm = perm
        """Indices into the sightings (in arrival order), in the order of the way."""
        self.dirs = dirs
        self.steps = [((a, b), ia, ib, max(ia), min(ib)) for a, b, ia, ib in steps]
        """((node, next node), indices of the node's sightings, of the next node's, the last of the first and
        the first of the second (the ones to compare when sightings are in time order, see
        Correlator._sorted)): clock samples."""
        mask = 0
        for o in obs:
            mask |= 1 << o[1]
        self.mask = mask
        self.segs = [((obs[i][1], obs[j][1]), i, j) for i, j in zip(perm, perm[1:])]
        """((point, next point), index, next index) for each step of the way."""
        self.tally = (mask, tuple(seg for seg, _, _ in self.segs))
        """What the flow counts of it: the points it passed and the steps between them."""
        self.sampler: _Sampler | None = None
        """The latency sample of the packets that went this way (None: a lone sighting)."""
        self.pairs: tuple[tuple[int, int], ...] = ()
        """(index, next index) of each step of the way, in the order of the sampler's items."""
        self.ties: tuple[tuple[int, int], ...] = ()
        """Pairs whose order a tie of timestamps would turn (see Correlator.order)."""


class _Flow:
    """Per-flow state. In summary mode it holds counters only."""

    __slots__ = ("cks", "proto", "syn_sender", "first_sender", "packets", "http", "records", "masks", "pairs",
                 "endpoints_seen", "nat", "tallies", "first_time", "unsure", "uncovered")

    def __init__(self, proto: int):
        self.cks: set = set()
        self.proto = proto
        self.syn_sender = None
        self.first_sender = None
        self.packets = 0
        self.http = False
        self.records: list = []
        self.masks: dict[tuple, dict] = {}   # sender endpoint -> {bitmask of points: packets}
        self.pairs: dict[tuple, dict] = {}   # sender endpoint -> {(point a, point b) consecutive: packets}
        self.tallies: dict[tuple, dict] = {}  # sender endpoint -> {_Shape.tally: packets}; -> masks, pairs
        self.endpoints_seen: dict[tuple, int] = {}
        # (kind, (ip, port) before, (ip, port) after, point index where first seen translated)
        self.nat: list[tuple] = []
        self.first_time = float("inf")
        """Capture time of its earliest packet (orders flows that tie on packets)."""
        self.unsure: dict[tuple, Counter] = {}
        """Sender endpoint -> Counter((mask, before, after)): packets that missed points whose
        node had captured nothing yet (`before`, a bitmask of points) or nothing more (`after`)
        at the time: lost there, or gone by a capture not yet (no longer) running."""
        self.uncovered: list[int] = []
        """Kept packets (beside `records`, once run() has put them in order): the points each
        missed whose node captured nothing at the time (a bitmask; see Correlator._uncovered)."""

    def absorb(self, other: _Flow) -> None:
        if other.first_time < self.first_time and other.first_sender is not None:
            self.first_sender = other.first_sender
        else:
            self.first_sender = self.first_sender or other.first_sender
        self.first_time = min(self.first_time, other.first_time)
        self.cks |= other.cks
        self.syn_sender = self.syn_sender or other.syn_sender
        self.packets += other.packets
        self.http |= other.http
        self.records.extend(other.records)
        for sender, tallies in other.tallies.items():  # (masks, pairs and endpoints come from these later)
            mine = self.tallies.setdefault(sender, {})
            for k, n in tallies.items():
                mine[k] = mine.get(k, 0) + n
        self.nat.extend(n for n in other.nat if n not in self.nat)
        for sender, counts in other.unsure.items():
            self.unsure.setdefault(sender, Counter()).update(counts)

    def count_tallies(self) -> None:
        """Turn the shape tallies into masks, pairs and endpoint counts (once, after the last packet)."""
        # (plain dicts: a Counter each, four a flow, cost more than the counting on big captures)
        seen = self.endpoints_seen
        for sender, tallies in self.tallies.items():
            masks = self.masks.setdefault(sender, {})
            pairs = self.pairs.setdefault(sender, {})
            seen[sender] = seen.get(sender, 0) + sum(tallies.values())
            for (mask, segs), n in tallies.items():
                masks[mask] = masks.get(mask, 0) + n
                for seg in segs:
                    pairs[seg] = pairs.get(seg, 0) + n


class _Sampler:
    """A bounded uniform sample of the packets that went one way (one tuple of steps): each packet
    taken gives the latencies of all its steps at once, so a packet costs one counter, not one a
    step. Percentiles without memory growing with packet count (see Correlator.latency).

    Li's Algorithm L: once the sample is full, the number of packets to skip before the next one
    that goes in is drawn directly, so most packets cost a counter increment. The caller adds a
    packet as `n += 1; if n >= next: (append while below fill, else take)` (inlined in
    Correlator._finalize_all).
    """

    __slots__ = ("steps", "n", "items", "rng", "next", "w", "size", "fill")

    def __init__(self, steps: tuple[tuple[int, int], ...], rng: random.Random, size: int):
        self.steps = {seg: k for k, seg in enumerate(steps)}
        """(point, next point) -> its place in each item."""
        self.n = 0
        self.items: list[tuple[float, ...]] = []
        self.rng = rng
        self.next = 0
        self.w = 1.0
        self.size = size
        self.fill = size - 1  # below this the caller just appends

    def take(self, x: tuple[float, ...]) -> None:
        """Packet number n, when n >= next (the caller appends the first `fill` itself)."""
        rnd, k = self.rng.random, self.size
        if len(self.items) < k:  # the last free place: the sample is full from here on
            self.items.append(x)
            self.w = math.exp(math.log(1.0 - rnd()) / k)
        else:
            self.items[int(rnd() * k)] = x
            self.w *= math.exp(math.log(1.0 - rnd()) / k)
        w = min(self.w, 1.0 - 1e-12)
        self.next = self.n + int(math.log(1.0 - rnd()) / math.log(1.0 - w)) + 1


def _percentiles(samples: list[tuple[list[float], float]], qs: Iterable[float]) -> list[float]:
    """Percentiles of the union of uniform samples, each (values, weight: packets each value
    stands for). `s[int(q * len(s))]` of the sorted values when the weights are equal."""
    if len({w for _, w in samples}) == 1:
        s = sorted(v for vals, _ in samples for v in vals)
        return [s[min(len(s) - 1, int(q * len(s)))] for q in qs]
    s = sorted((v, w) for vals, w in samples for v in vals)
    total = sum(w for _, w in s)
    out = []
    for q in qs:
        cum, want = 0.0, q * total
        for v, w in s:
            cum += w
            if cum > want:
                break
        out.append(v)
    return out


class Correlator:
    """Feed it capture inputs; `run()` returns the internal result that `build_trace` turns into a model."""

    def __init__(self, inputs: Iterable[CaptureInput], options: Options | None = None,
                 progress: Callable[[float], None] | None = None):
        """`progress`, if given, is told the share of the captures' bytes read so far, every
        PROGRESS_EVERY seconds while reading."""
        self.inputs = list(inputs)
        self.opts = options or Options()
        self._progress = progress
        self._caps: list = []  # (pcapio.CaptureFile of each input, once opened: their `read`)
        self.points: list[_Point] = []
        self.point_index: dict[str, int] = {}
        self.warnings: list[str] = []
        self.flows_by_ck: dict[tuple, _Flow] = {}
        self.offset_samples: dict[tuple[str, str], float] = {}  # (node a, node b) -> min(t_b - t_a), a before b
        self.offsets: dict[str, float] = {}
        self.samplers: dict[tuple[tuple[int, int], ...], _Sampler] = {}  # steps of a way -> its latency sample
        self.rng = random.Random(4096)
        self.total_frames = 0
        self.distinct = 0
        self._shapes: dict[tuple, _Shape] = {}
        self._ends: dict[bytes, tuple] = {}
        self._keep = self.opts.keep_packets
        self._sorted = True
        """Every file so far in time order: sightings arrive in time order (shapes may be shared)."""
        self._workers = Workers(self.opts.jobs)

    # ---- reading ----

    def _point(self, node: str, interface: str, path: str) -> int:
        pid = f"{node}/{interface}"
        idx = self.point_index.get(pid)
        if idx is None:
            idx = len(self.points)
            self.points.append(_Point(pid, node, interface))
            self.point_index[pid] = idx
        if path not in self.points[idx].files:
            self.points[idx].files.append(path)
        return idx

    def _open(self, inp: CaptureInput) -> Iterator[list[tuple]]:
        """Open one input (refusing what is not a capture) and return its batches of sightings."""
        cap, records = open_capture(inp.path)
        self._caps.append(cap)
        if not self.opts.keep_packets and self.opts.fast and (
                cap.format == "pcap" and cap.interfaces and cap.interfaces[0].linktype == LINKTYPE_ETHERNET
                or cap.format == "pcapng" and pcapng_head(cap)):
            # (its point now, read here or not: a worker needs its index from the start; never
            # a whole node's, which only Linux cooked frames can be)
            pidx = self._iface_point(inp, cap, 0, False)
            assert pidx is not None
            records.close()
            stats, vx = self.points[pidx].stats, self.opts.vxlan_ports

            def warn(w: str) -> None:
                self.warnings.append(f"{inp.path}: {w}")

            batches = self._workers.read(cap, pidx, stats, vx, warn) if self._workers.wants(inp.path) else None
            if batches is None:
                batches = pcap_sightings(cap, pidx, stats, vx, warn)
            return self._read_on(inp, cap, batches, pidx) if cap.format == "pcapng" else batches
        return self._read(inp, cap, records)

    def _read_on(self, inp: CaptureInput, cap, batches: Iterator[list[tuple]], pidx: int) -> Iterator[list[tuple]]:
        """A pcapng file's fast batches, then what the general reader makes of the rest of it when
        the fast reader left some (cap.resume): another interface, a corrupt or cut-short block."""
        yield from batches
        if cap.resume is not None:
            yield from self._read(inp, cap, resume_records(cap), [pidx], cap.resume[0])

    def _iface_point(self, inp: CaptureInput, cap, i: int, multi: bool) -> int | None:
        """The point of a file's interface `i` (None: a whole node's capture, a point per frame's
        interface). `multi`: whether the file described more than one interface before its first
        packet."""
        iface = cap.interfaces[i]
        name = iface.name or ""
        if inp.split_node is not None and name in ("", "any") and _whole_node(inp.path, i, iface):
            return None
        if inp.forced or not name:
            return self._point(inp.node, inp.interface, inp.path)
        if "/" in name:
            node, _, ifname = name.partition("/")
            return self._point(node, ifname, inp.path)
        return self._point(inp.node, name if multi else inp.interface, inp.path)

    def _read(self, inp: CaptureInput, cap, records, by_iface: list[int] | None = None,
              taken: int = 24) -> Iterator[list[tuple]]:
        """The general reader's batches (every frame decoded). `by_iface`, `taken`: the points of
        the interfaces and the bytes read by a reader that began the file (see _read_on)."""
        vxlan_ports = self.opts.vxlan_ports
        keep = self.opts.keep_packets
        multi = None if by_iface is None else False
        by_iface = [] if by_iface is None else by_iface
        split: dict[int, dict[int, int]] = {}  # file interface -> {interface index -> point} (tcpdump -i any)
        batch: list[tuple] = []
        overhead = 16 if cap.format == "pcap" else 32  # (record headers: for progress)
        try:
            for rec in records:
                i = rec.interface
                if i >= len(by_iface):
                    if multi is None:
                        multi = len(cap.interfaces) > 1
                    while len(by_iface) <= i:
                        pidx = self._iface_point(inp, cap, len(by_iface), multi)
                        if pidx is None:
                            split[len(by_iface)] = {}
                        by_iface.append(-1 if pidx is None else pidx)
                taken += len(rec.data) + overhead
                fr = decode(cap.interfaces[i].linktype, rec.data, rec.orig_len, vxlan_ports)
                pidx = by_iface[i]
                if pidx < 0:  # a whole node's capture: the frame's own interface is the point
                    ifindex = fr.ifindex or 0  # (0: a header cut short)
                    pidx = split[i].get(ifindex)
                    if pidx is None:
                        pidx = split[i][ifindex] = self._point(inp.split_node, self._ifname(inp, ifindex), inp.path)
                e = self.points[pidx].stats.add_frame(fr, rec.time)
                if e is not None:
                    batch.append(from_frame(rec.time, pidx, fr, e, keep))
                    if len(batch) >= 1024:
                        cap.read = max(cap.read, taken)  # (a fast reader before may have read ahead)
                        yield batch
                        batch = []
            cap.read = max(cap.read, taken)
            if batch:
                yield batch
        finally:
            for w in cap.warnings:
                self.warnings.append(f"{inp.path}: {w}")
        unnamed = sorted(k for d in split.values() for k in d if (inp.split_node, k) not in self.opts.ifnames)
        if unnamed:
            self.warnings.append(
                f"{inp.path}: a capture of every interface of {inp.split_node} (tcpdump -i any), one point per "
                f"interface; interface index {', '.join(map(str, unnamed))} named if<index>: give their names with "
                f"--path-file (tracer path SRC DST --output json) or --ifname {inp.split_node}/{unnamed[0]}=NAME "
                f"(`ip -o link` on the node lists them)")
        if not by_iface:
            # A capture that saw nothing is still a point of the way: it tells where packets did not go.
            named = [i.name for i in cap.interfaces if i.name and "/" in i.name and not inp.forced]
            for name in named:
                node, _, ifname = name.partition("/")
                self._point(node, ifname, inp.path)
            if not named:
                self._point(inp.node, inp.interface, inp.path)

    def _ifname(self, inp: CaptureInput, ifindex: int) -> str:
        return self.opts.ifnames.get((inp.split_node, ifindex)) or f"if{ifindex}"

    # ---- the main loop ----

    def run(self) -> Correlator:
        with no_cyclic_gc():
            try:
                self._loop()
            finally:
                self._workers.close()
            self.total_frames = sum(p.stats.frames for p in self.points)
            mixed = [pt for pt in self.points if len({os.path.dirname(os.path.abspath(f)) for f in pt.files}) > 1]
            if mixed:
                self.warnings.append(
                    f"{len(mixed)} point{'s are' if len(mixed) > 1 else ' is'} read from files in different directories "
                    f"(as {mixed[0].id}: {', '.join(mixed[0].files)}): captures of different runs taken as one? "
                    f"Analyze one capture set at a time, or name points apart with --point NAME=FILE")
            for pt in self.points:
                st = pt.stats
                pt.role = "pod-veth" if pt.node in self.opts.pods else infer_role(
                    pt.interface, encapsulated=st.encapsulated, frames=st.frames, calico_mac_seen=st.calico_mac)
            self._solve_offsets()
            window = self._capture_window()  # (with every frame read and the final clock offsets)
            for flow in self.flows():
                flow.count_tallies()
                if self.opts.keep_packets:
                    # Put every kept packet in order once more, now with the final clock offsets,
                    # and the packets in the order they set out (they were kept as they were
                    # finalized: one that missed a point only when its window ran out).
                    kept = sorted(((self._sightings(obs), self._uncovered_now(obs, window)) for obs in flow.records),
                                  key=lambda r: self._set_out(r[0]))
                    flow.records = [seq for seq, _ in kept]
                    flow.uncovered = [u for _, u in kept]
        return self

    def _loop(self) -> None:
        """Read, merge by time, gather each packet's sightings, finalize it."""
        # Open every file first, so that a bad one is refused before any work is done.
        streams = [self._open(inp) for inp in self.inputs]
        # pending: identity -> the packet's record [first time, bitmask of points, sightings, identity, next];
        # a second packet with the same identity (a retransmission seen again at a point) is chained as `next`.
        pending: dict = {}
        queue: deque = deque()  # records by first time, for the window
        window = self.opts.window
        points = self.points
        done: list[list[tuple]] = []  # finished packets, folded in after each batch
        finalize = done.append
        inf = float("inf")
        evict_at = inf
        progress, caps, due = self._progress, self._caps, 0.0
        if progress is not None:
            total = max(1, total_size(c.path for c in caps))
        for batch in _merge(streams, self._out_of_order):
            if progress is not None and (now := time.monotonic()) >= due:
                due = now + PROGRESS_EVERY
                progress(min(1.0, sum(c.read for c in caps) / total))
            if done:
                self._finalize_all(done)
                done.clear()
            full = (1 << len(points)) - 1
            for o in batch:
                ts = o[0]
                if ts > evict_at:
                    limit = ts - window
                    while queue and queue[0][0] < limit:
                        rec = queue.popleft()
                        if rec[2] is not None:  # (else finalized early)
                            _unlink(pending, rec)
                            finalize(rec[2])
                    evict_at = queue[0][0] + window if queue else inf
                key = o[2]
                bit = o[10]
                rec = pending.get(key)
                if rec is None:
                    rec = [ts, bit, [o], key, None]
                    pending[key] = rec
                    queue.append(rec)
                    if evict_at == inf:
                        evict_at = ts + window
                    continue
                while True:  # the first record of this identity not seen here yet (the usual: the first)
                    if not rec[1] & bit:
                        rec[1] |= bit
                        rec[2].append(o)
                        if rec[1] == full:
                            # Seen at every point there is: nothing more can come, finalize now (keeps memory low).
                            _unlink(pending, rec)
                            finalize(rec[2])
                            rec[2] = None
                        break
                    if rec[4] is None:  # seen here by every record: another packet of the same identity
                        rec[4] = [ts, bit, [o], key, None]
                        queue.append(rec[4])
                        break
                    rec = rec[4]
        if progress is not None:
            progress(1.0)
        while queue:
            obs = queue.popleft()[2]
            if obs is not None:
                finalize(obs)
        self._finalize_all(done)

    def _out_of_order(self) -> None:
        """A file went back in time: from now on no shortcut that relies on arrival order being time order."""
        self._sorted = False

    # ---- per packet ----

    def order(self, obs: list[tuple]) -> tuple[tuple[int, ...], tuple[str, ...], list[tuple], bool, tuple]:
        """Put one packet's sightings in the order of its way.

        Returns the indices of `obs` in that order, the direction at each (in/out/?), the node
        steps (node, next node, indices at node, indices at next node) whose time differences
        sample the clock offsets, whether the order follows from TTLs and roles alone (the
        same for every packet of this shape) rather than from timestamps across nodes, and the
        pairs of sightings (earlier, later arrival) whose order a tie of timestamps would turn.
        """
        points = self.points
        groups: dict[str, list[int]] = {}
        for i, o in enumerate(obs):
            groups.setdefault(points[o[1]].node, []).append(i)
        keyed = []
        for node, g in groups.items():
            ttls = [obs[i][TTL] for i in g]
            hi, lo = max(ttls), min(ttls)
            keyed.append(((-hi, -lo), min(obs[i][0] for i in g) - self.offsets.get(node, 0.0), node, g, hi, lo))
        keyed.sort(key=lambda k: (k[0], k[1]))
        by_ttl = len({k[0] for k in keyed}) == len(keyed)
        perm: list[int] = []
        dirs: list[str] = []
        steps = []
        ties: list[tuple[int, int]] = []
        last = len(keyed) - 1
        for gi, (ttlkey, _t, node, g, hi, lo) in enumerate(keyed):
            routed = hi != lo
            leaving = gi == 0 and last > 0

            def rank(i, hi=hi, routed=routed, leaving=leaving):
                o = obs[i]
                role = points[o[1]].role
                ingress = (o[TTL] == hi) if routed else not leaving
                if ingress:
                    return (-o[TTL], o[0], INGRESS_RANK.get(role, 4), -1 if o[CODE] >> 24 else 0)
                return (-o[TTL], o[0], EGRESS_RANK.get(role, 4), o[CODE] >> 24)

            g.sort(key=rank)
            # Pairs that arrived in one order but that the roles would put the other way round:
            # should the two carry the same timestamp, the roles decide (see _new_shape).
            for x in g:
                for y in g:
                    if x < y and obs[x][TTL] == obs[y][TTL]:
                        rx, ry = rank(x), rank(y)
                        if (ry[0], ry[2], ry[3]) < (rx[0], rx[2], rx[3]):
                            ties.append((x, y))
            for i in g:
                if routed:
                    d = "in" if obs[i][TTL] == hi else "out"
                elif gi == 0 and last > 0:
                    d = "out"
                elif gi == last and last > 0:
                    d = "in"
                else:
                    d = "?"
                perm.append(i)
                dirs.append(d)
            if gi < last and ttlkey != keyed[gi + 1][0]:
                steps.append((node, keyed[gi + 1][2], tuple(g), tuple(keyed[gi + 1][3])))
        return tuple(perm), tuple(dirs), steps, by_ttl, tuple(ties)

    def _set_out(self, seq: list[Sighting]) -> float:
        """When a packet was at the first point of its way, on the reference node's clock."""
        return seq[0].time - self.offsets.get(self.points[seq[0].point].node, 0.0)

    def _sightings(self, obs: list[tuple]) -> list[Sighting]:
        perm, dirs, _, _, _ = self.order(obs)
        return [Sighting(obs[i][1], obs[i][0], obs[i][FRAME], d) for i, d in zip(perm, dirs)]

    def _new_shape(self, obs: list[tuple], sig: tuple) -> _Shape:
        """Work out a packet's shape; keep it under `sig` (its sightings' codes in arrival order)
        for the packets like it, unless it may not be shared: when only timestamps order its
        nodes, or when two sightings that a tie would turn carry the same timestamp (the order
        then falls to the points' roles, not to arrival). `sig` is () when it may not be shared
        anyway (a file went out of time order: arrival order is not time order then)."""
        if len(obs) == 1:
            shape = _Shape((0,), ("?",), [], obs)
        else:
            perm, dirs, steps, by_ttl, ties = self.order(obs)
            shape = _Shape(perm, dirs, steps, obs)
            shape.ties = ties
            if not by_ttl or any(obs[i][0] == obs[j][0] for i, j in ties):
                sig = ()
        if shape.segs:
            shape.sampler = self._sampler(shape.tally[1])
            shape.pairs = tuple((i, j) for _, i, j in shape.segs)
        if sig:
            self._shapes[sig] = shape
        return shape

    def _sampler(self, steps: tuple[tuple[int, int], ...]) -> _Sampler:
        sm = self.samplers.get(steps)
        if sm is None:
            # (a way's sample holds a tuple a packet: past the usual handful of ways, smaller ones)
            size = RESERVOIR if len(self.samplers) < MANY_WAYS else RESERVOIR // 16
            sm = self.samplers[steps] = _Sampler(steps, self.rng, size)
        return sm

    def latency(self, seg: tuple[int, int], qs: Iterable[float]) -> list[float] | None:
        """Percentiles of the time from point a to point b (each on its own clock), from the
        samples of every way that has that step; None if no packet went that way."""
        samples = []
        for sm in self.samplers.values():
            k = sm.steps.get(seg)
            if k is not None and sm.items:
                samples.append(([it[k] for it in sm.items], sm.n / len(sm.items)))
        return _percentiles(samples, qs) if samples else None

    def _finalize_all(self, done: Iterable[list[tuple]]) -> None:
        """Fold finished packets (each the list of its sightings), in order, into their flows."""
        shapes, ends_info, flows_by_ck, samples = self._shapes, self._ends, self.flows_by_ck, self.offset_samples
        in_order, keep, new_shape = self._sorted, self._keep, self._new_shape
        self.distinct += len(done)
        full = (1 << len(self.points)) - 1
        check_windows = not self.opts.captured_together
        window = self._capture_window() if check_windows else None
        for obs in done:
            # (a lone sighting's shape does not depend on arrival order)
            sig = tuple(map(_code, obs)) if in_order or len(obs) == 1 else ()
            shape = shapes.get(sig) if sig else None
            if shape is None:
                shape = new_shape(obs, sig)
            elif shape.ties and any(obs[i][0] == obs[j][0] for i, j in shape.ties):
                shape = new_shape(obs, ())  # same instant: the roles decide, not this shape's arrival order
            for k, ia, ib, a, b in shape.steps:
                # sightings in time order: the node's last one and the next node's first
                d = obs[b][0] - obs[a][0] if in_order else min([obs[i][0] for i in ib]) - max([obs[i][0] for i in ia])
                cur = samples.get(k)
                if cur is None or d < cur:
                    samples[k] = d
                    self._solve_offsets()
                    if check_windows:
                        window = self._capture_window()
            first = obs[shape.perm[0]]
            e = first[5]
            info = ends_info.get(e)
            proto = first[PROTO]
            if info is None or info[0] != proto:
                # [protocol, flow key, sender endpoint, its flow and that flow's tallies of it]
                src, dst = split_ends(e)
                info = ends_info[e] = [proto, (proto, src, dst) if src <= dst else (proto, dst, src), src, None, None]
            sender = info[2]
            if len(set(map(_ends, obs))) == 1:
                flow = info[3]
                if flow is None:
                    ck = info[1]
                    flow = flows_by_ck.get(ck)
                    if flow is None:
                        flow = flows_by_ck[ck] = _Flow(proto)
                        flow.cks.add(ck)
                    info[3] = flow
                    info[4] = flow.tallies.setdefault(sender, {})
                tallies = info[4]
            else:  # addresses or ports change on the way: NAT
                flow = self._flow_of(proto, obs)
                if len(flow.nat) < 8:
                    self._note_nat(flow, [obs[i] for i in shape.perm])
                tallies = flow.tallies.get(sender)
                if tallies is None:
                    tallies = flow.tallies[sender] = {}
            flow.packets += 1
            if first[0] < flow.first_time:
                flow.first_time = first[0]
            if flow.first_sender is None:
                flow.first_sender = sender
            flags = first[7]
            if proto == PROTO_TCP and flags is not None and flags & 0x12 == 0x02:
                flow.syn_sender = sender
            if not flow.http and first[HEAD] and first[HEAD].startswith(HTTP_STARTS):
                flow.http = True
            if keep:
                flow.records.append(obs)
            tally = shape.tally
            tallies[tally] = tallies.get(tally, 0) + 1
            if shape.mask != full and check_windows:  # did the points that missed it capture at the time?
                # (judged with the clock offsets known by now; kept packets again at the end)
                before, after = self._uncovered(obs, shape.mask, window)
                if before or after:
                    flow.unsure.setdefault(sender, Counter())[(shape.mask, before, after)] += 1
            sm = shape.sampler
            if sm is not None:
                sm.n += 1
                if sm.n >= sm.next:
                    lat = tuple([obs[j][0] - obs[i][0] for i, j in shape.pairs])
                    if len(sm.items) < sm.fill:
                        sm.items.append(lat)
                    else:
                        sm.take(lat)

    # ---- capture windows ----

    def _capture_window(self) -> tuple[float, float, dict[str, tuple[float, float]]]:
        """When each node was capturing (from the first frame of any of its points to the last so
        far), on the reference node's clock, and when all of them were: a packet inside that
        passed no node that was not capturing. Nodes, not points: a point's first frame can come
        long after its capture began (an idle veth), its node's others tell when that was."""
        offs = self.offsets
        nodes: dict[str, tuple[float, float]] = {}
        for p in self.points:
            st = p.stats
            if st.first <= st.last:  # (a capture without frames: no window of its own to tell)
                off = offs.get(p.node, 0.0)
                lo, hi = nodes.get(p.node, (float("inf"), float("-inf")))
                nodes[p.node] = (min(lo, st.first - off), max(hi, st.last - off))
        if not nodes:
            return float("-inf"), float("inf"), nodes
        return max(lo for lo, _ in nodes.values()), min(hi for _, hi in nodes.values()), nodes

    def _uncovered(self, obs: list[tuple], mask: int, window: tuple) -> tuple[int, int]:
        """The points not in `mask` whose node had captured nothing yet when this packet went by
        (its first frame came after the packet's last sighting), and those whose node had
        captured its last frame already (before the packet's first sighting), on the reference
        clock: two bitmasks of points, (0, 0) at once when the packet is inside the window all
        nodes were capturing in."""
        offs, points = self.offsets, self.points
        times = [o[0] - offs.get(points[o[1]].node, 0.0) for o in obs]
        lo, hi = min(times), max(times)
        if window[0] <= lo and hi <= window[1]:
            return 0, 0
        nodes = window[2]
        before = after = 0
        for i, p in enumerate(points):
            if mask >> i & 1 or p.node not in nodes:
                continue
            start, end = nodes[p.node]
            if hi < start:
                before |= 1 << i
            elif lo > end:
                after |= 1 << i
        return before, after

    def _uncovered_now(self, obs: list[tuple], window: tuple) -> int:
        """_uncovered for a kept packet once everything is read: the points either way."""
        if self.opts.captured_together:
            return 0
        mask = 0
        for o in obs:
            mask |= 1 << o[1]
        before, after = self._uncovered(obs, mask, window)
        return before | after

    def _flow_of(self, proto: int, obs: list[tuple]) -> _Flow:
        """The flow of a packet whose addresses or ports change on the way (NAT): one flow for all."""
        cks = set()
        for o in obs:
            a, b = split_ends(o[5])
            cks.add((proto, a, b) if a <= b else (proto, b, a))
        flow = None
        for ck in cks:
            other = self.flows_by_ck.get(ck)
            if other is None or other is flow:
                continue
            if flow is None:
                flow = other
            else:
                big, small = (flow, other) if flow.packets >= other.packets else (other, flow)
                big.absorb(small)
                self._ends.clear()  # (it points at flows and their tallies: `small` is gone)
                for c in small.cks:
                    self.flows_by_ck[c] = big
                flow = big
        if flow is None:
            flow = _Flow(proto)
        for ck in cks:
            if ck not in flow.cks:
                flow.cks.add(ck)
                self.flows_by_ck[ck] = flow
        return flow

    @staticmethod
    def _note_nat(flow: _Flow, seq: list[tuple]) -> None:
        prev = split_ends(seq[0][5])
        for o in seq[1:]:
            cur = split_ends(o[5])
            for kind, before, after in (("dnat", prev[1], cur[1]), ("snat", prev[0], cur[0])):
                if before != after:
                    entry = (kind, before, after, o[1])
                    if entry not in flow.nat:  # (one per point where it showed first: trace picks the earliest)
                        flow.nat.append(entry)
            prev = cur

    # ---- clocks ----

    def _solve_offsets(self) -> None:
        """Offsets relative to the reference node from the fastest crossing in each direction.

        b's clock may be ahead of a's by any offset that keeps both fastest crossings from going
        back in time: between -d_ba and d_ab. When 0 is among them the clocks need no correction
        (as in the lab, one kernel clock: a midpoint would only turn unequal one-way times into a
        made-up offset); else the midpoint (NTP's estimate: equal one-way times). With traffic one
        way only, a fastest crossing between 0 and ONE_WAY_MAX is taken as it is, else as all
        offset (the crossing then takes 0 s)."""
        est: dict[tuple[str, str], float] = {}
        for (a, b), d_ab in self.offset_samples.items():
            d_ba = self.offset_samples.get((b, a))
            if d_ba is None:
                off = 0.0 if 0.0 <= d_ab <= ONE_WAY_MAX else d_ab
            elif -d_ba <= 0.0 <= d_ab:
                off = 0.0
            else:
                off = (d_ab - d_ba) / 2
            est[(a, b)] = off
            est[(b, a)] = -off
        if not est:
            return
        nodes = sorted({n for pair in est for n in pair}, key=self._node_rank)
        offsets = {nodes[0]: 0.0}
        todo = [nodes[0]]
        while todo:
            a = todo.pop()
            for (x, y), off in est.items():
                if x == a and y not in offsets:
                    offsets[y] = offsets[a] + off
                    todo.append(y)
        self.offsets = offsets

    def _node_rank(self, node: str):
        """The reference clock is the node with the most points (the first of them on a tie)."""
        count = sum(1 for p in self.points if p.node == node)
        for i, p in enumerate(self.points):
            if p.node == node:
                return (-count, i, node)
        return (0, len(self.points), node)

    def flows(self) -> list[_Flow]:
        """Each flow once, in the order every view shows them: HTTP first, then by packets, then by time."""
        seen, out = set(), []
        for f in self.flows_by_ck.values():
            if id(f) not in seen:
                seen.add(id(f))
                out.append(f)
        out.sort(key=lambda f: (not f.http, -f.packets, f.first_time))
        return out


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector off (nested: as it was before, after). Reading, correlating
    and describing make many objects and no reference cycles: the collector would only rescan
    the growing per-flow state again and again (a fifth of the time of a big summary)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def total_size(paths: Iterable[str]) -> int:
    """Bytes of the files together (those that cannot be read count 0: reading them says why)."""
    size = 0
    for path in paths:
        try:
            size += os.path.getsize(path)
        except OSError:
            pass
    return size


def _unlink(pending: dict, rec: list) -> None:
    """Take a packet's record out of `pending` (out of its identity's chain)."""
    head = pending[rec[3]]
    if head is rec:
        if rec[4] is None:
            del pending[rec[3]]
        else:
            pending[rec[3]] = rec[4]
        return
    while head[4] is not rec:
        head = head[4]
    head[4] = rec[4]


def _merge(streams: list[Iterator[list[tuple]]], out_of_order: Callable[[], None]) -> Iterator[list[tuple]]:
    """Batches of sightings from every stream, merged by time, equal times in stream order (as
    heapq.merge would, whatever the batch sizes).

    The horizon of a round is the earliest of the streams' latest times at hand. A round takes,
    from every stream, what comes before it, and what comes at it too once no stream can bring
    more of that instant (else the streams whose batch ends there read on first). The round is
    sorted: a merge of sorted runs, which sorting does fast, and stable. If a stream is not in
    time order itself, what comes out may go back in time: `out_of_order` is called before the
    first batch that does.
    """
    heads: list[list] = []  # [batch, position, stream, ended]
    for s in streams:
        for b in s:
            if b:
                heads.append([b, 0, s, False])
                break
    key = itemgetter(0)
    last = float("-inf")
    in_order = True
    while heads:
        horizon = min(h[0][-1][0] for h in heads)
        # (bounded: a file whose frames all carry one time, as pcapng simple packet blocks do, is
        # not held whole; its ties then fall where the batches end)
        waiting = any(h[0][-1][0] == horizon and not h[3] and len(h[0]) - h[1] < TIE_HOLD for h in heads)
        out: list[tuple] = []
        for h in heads:
            b, pos = h[0], h[1]
            if waiting:
                end = bisect_left(b, horizon, lo=pos, key=key)
            elif b[-1][0] == horizon:
                end = len(b)  # an ended stream gives all it has left (progress even if out of order)
            else:
                end = bisect_right(b, horizon, lo=pos, key=key)
            if end > pos:
                out.extend(b[pos:end] if pos or end < len(b) else b)
                h[1] = end
        if out:
            if len(heads) > 1:
                out.sort(key=key)
            if in_order and (out[0][0] < last or len(heads) == 1 and any(map(gt, map(key, out), map(key, islice(out, 1, None))))):
                in_order = False
                out_of_order()
            last = out[-1][0]
            yield out
        for h in heads:
            if h[1] >= len(h[0]) or (waiting and h[0][-1][0] == horizon and not h[3] and len(h[0]) - h[1] < TIE_HOLD):
                more = None if h[3] else next((b for b in h[2] if b), None)
                if more is None:
                    h[3] = True
                    if h[1] >= len(h[0]):
                        h[0] = None
                else:
                    h[0], h[1] = (h[0][h[1]:] + more if h[1] < len(h[0]) else more), 0
        heads = [h for h in heads if h[0] is not None]


def _whole_node(path: str, interface: int, iface) -> bool:
    """Whether a file's interface holds a `tcpdump -i any` capture: Linux cooked v2 frames from
    more than one interface index (read ahead in a second pass over the file, until a second one
    shows up)."""
    if iface.linktype != LINKTYPE_LINUX_SLL2:
        return False
    _, records = open_capture(path)
    first = None
    try:
        for rec in records:
            if rec.interface == interface and len(rec.data) >= 8:
                if first is None:
                    first = rec.data[4:8]
                elif rec.data[4:8] != first:
                    return True
    finally:
        records.close()
    return False


def inputs_from_paths(paths: Iterable[str], points: Iterable[str] = ()) -> list[CaptureInput]:
    """Capture inputs from the command line: directories laid out as <node>/<interface>.pcap[ng],
    single files (node = parent directory name, interface = file stem), and NAME=FILE overrides."""
    out: list[CaptureInput] = []
    for spec in points:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CaptureFileError(f"--point {spec!r}: expected NAME=FILE", "e.g. --point worker1/eth1=node1-eth1.pcap")
        node, _, iface = name.rpartition("/")
        # NAME is a node (no slash) or node/any: a tcpdump -i any capture in FILE is split per interface.
        whole = iface if not node else node if iface == "any" else None
        out.append(CaptureInput(path=path, node=node or "-", interface=iface, forced=True, split_node=whole))
    for path in paths:
        if os.path.isdir(path):
            found = _scan_dir(path)
            if not found:
                raise CaptureFileError(f"{path}: no capture files in it",
                                       "lay captures out as <node>/<interface>.pcap (or .pcapng) below the directory")
            out.extend(found)
        else:
            out.append(_file_input(path))
    return out


CAPTURE_SUFFIXES = (".pcapng", ".pcap", ".cap")


def _file_input(path: str, in_node_dir: bool = False) -> CaptureInput:
    """A file's point: <parent directory>/<file stem>. Should it hold a tcpdump -i any capture,
    its node is the directory when the file is `any.pcap` or sits in a node's directory of a
    laid-out tree (`in_node_dir`), else the file stem (`worker1.pcap`)."""
    base = os.path.basename(path)
    stem = base
    for suf in CAPTURE_SUFFIXES:
        if base.endswith(suf):
            stem = base[: -len(suf)]
            break
    node = os.path.basename(os.path.dirname(os.path.abspath(path))) or "-"
    return CaptureInput(path=path, node=node, interface=stem, split_node=node if in_node_dir or stem == "any" else stem)


def _scan_dir(root: str) -> list[CaptureInput]:
    out = []
    top = os.path.normpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(CAPTURE_SUFFIXES):
                out.append(_file_input(os.path.join(dirpath, name), in_node_dir=os.path.normpath(dirpath) != top))
    return out
