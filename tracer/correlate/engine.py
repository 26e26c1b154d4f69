"""The correlation engine: find the same packet at every capture point and put its hops in order.

Streaming design. Every capture file is read once (tracer.capture.reader), all of them merged by
timestamp (merge); a packet's sightings are gathered under its identity (what stays the same
across hops: IP ID, protocol, TCP seq/ack/flags and payload length, UDP payload; never TTL,
checksums, MACs or the NAT-ed addresses: tracer.capture.sightings.identity) for `window` seconds
of capture time, then the packet is finalized: its hops are put in the order of its way (order)
and it is folded into its flow (flows), its clock samples (clocks) and its latency (latency).
In summary mode nothing per packet is kept after that, so memory follows the number of flows
and the packet rate, not the packet count. `run()` returns a Correlation (result), which
tracer.correlate.describe turns into the model.

The per-packet loops (`_loop`, `_finalize_all`) stay whole functions with the state they touch
bound to locals, and read sightings by index (o[0] T, o[1] P, o[2] KEY, o[5] ENDS, o[10] BIT:
tracer.capture.sightings): a call or an attribute lookup per packet is what they cannot afford.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter

from tracer.capture.inputs import CaptureInput
from tracer.capture.reader import CaptureSet
from tracer.capture.sightings import CODE, ENDS, FLAGS, HEAD, HTTP_STARTS, PROTO, split_ends
from tracer.correlate.clocks import Clocks
from tracer.correlate.flows import FlowState, FlowTable
from tracer.correlate.latency import LatencySamples
from tracer.correlate.merge import merge_batches
from tracer.correlate.order import HopOrder
from tracer.correlate.pieces import GROUP, NO_DATA, Ranges, assemble
from tracer.correlate.result import Correlation
from tracer.decode import PROTO_TCP, VXLAN_PORTS

PROGRESS_EVERY = 0.2  # seconds
_code, _ends, _time = itemgetter(CODE), itemgetter(ENDS), itemgetter(0)


@dataclass(frozen=True, kw_only=True)
class CorrelationOptions:
    """How to correlate: which UDP ports are VXLAN, how long a packet waits, what is kept."""

    vxlan_ports: frozenset[int] = VXLAN_PORTS
    window: float = 10.0
    """Seconds of capture time a packet waits for its other sightings (covers clock offsets)."""
    keep_packets: bool = True
    """False: summary mode, per-packet state is dropped once a packet is finalized."""
    way_hint: tuple[str, ...] = ()
    """Point ids of the request way in order (from a saved path.json), if known."""
    other_ways: tuple[tuple[str, ...], ...] = ()
    """Point ids of other expected ways (the DNS query's): a flow takes the way it fits best."""
    way_ends: tuple[str, ...] = ()
    """The IP each expected way goes to (way_hint's, then other_ways'): a flow to one of them
    takes that way, whatever points it reached."""
    blind_points: frozenset[str] = frozenset()
    """Point ids of the way its data path may carry packets past unseen (path.json's `bypass`,
    e.g. Cilium's lxc veths under BPF host routing): a packet not seen there is not visible
    there, neither lost nor a gap."""
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
    offloads: dict[str, dict[str, str]] = field(default_factory=dict)
    """Point id -> its offloads as its capture agent read them (`ethtool -k`'s names): the
    hops that say how a packet was carried name the settings that did it."""
    captured_together: bool = False
    """Every capture ran over the whole exchange: no packet went by a point not capturing.
    Else a point's node is taken to capture from the first frame of any of its points to the
    last (see tracer.correlate.clocks)."""


class Correlator:
    """Feed it capture inputs; `run()` reads and correlates them and returns the Correlation."""

    def __init__(self, inputs: Iterable[CaptureInput], options: CorrelationOptions | None = None,
                 progress: Callable[[float], None] | None = None):
        """`progress`, if given, is told the share of the captures' bytes read so far, every
        PROGRESS_EVERY seconds while reading."""
        self.opts = opts = options or CorrelationOptions()
        self.captures = CaptureSet(inputs, vxlan_ports=opts.vxlan_ports, keep_packets=opts.keep_packets,
                                   fast=opts.fast, ifnames=opts.ifnames, jobs=opts.jobs)
        self.points = self.captures.points
        self.clocks = Clocks(self.points)
        self.latency = LatencySamples()
        self.order = HopOrder(self.points, self.clocks, self.latency)
        self.flows = FlowTable()
        self.distinct = 0
        self.in_order = True
        """Every file so far in time order: sightings arrive in time order (else each packet's are
        sorted by time before its shape is looked up)."""
        self._keep = opts.keep_packets
        self._progress = progress
        self.ranges = Ranges()
        """TCP data by sequence range: what TSO/GSO cut or GRO merged (tracer.correlate.pieces)."""

    def run(self) -> Correlation:
        with no_cyclic_gc():
            try:
                self._loop()
            finally:
                self.captures.close()
            total_frames = self.captures.frames
            self.captures.note_mixed_directories()
            self.captures.note_empty_captures()
            self.captures.settle_roles(self.opts.pods)
            self.clocks.solve()
            window = self.clocks.window()  # (with every frame read and the final clock offsets)
            flows = self.flows.ordered()
            together = self.opts.captured_together
            for flow in flows:
                flow.count_tallies()
                if self.opts.keep_packets:
                    # Put every kept packet in order once more, now with the final clock offsets,
                    # and the packets in the order they set out (they were kept as they were
                    # finalized: one that missed a point only when its window ran out).
                    kept = sorted(((self.order.sightings(obs), 0 if together else self.clocks.uncovered_either_way(obs, window))
                                   for obs in flow.records), key=lambda r: self.order.set_out(r[0]))
                    flow.records = [seq for seq, _ in kept]
                    flow.uncovered = [u for _, u in kept]
        return Correlation(points=self.points, point_index=self.captures.point_index, flows=flows,
                           clocks=self.clocks, window=window, latency=self.latency, warnings=self.captures.warnings,
                           total_frames=total_frames, packets=self.distinct, options=self.opts,
                           unfollowed=self.captures.unfollowed)

    def _loop(self) -> None:
        """Read, merge by time, gather each packet's sightings, finalize it."""
        # Open every file first, so that a bad one is refused before any work is done.
        streams = self.captures.open()
        # pending: identity -> the packet's record [first time, bitmask of points, sightings, identity, next,
        # group]; a second packet with the same identity (a retransmission seen again at a point) is
        # chained as `next`; group: TCP data that shares bytes with other records (tracer.correlate.pieces).
        pending: dict = {}
        queue: deque = deque()  # records by first time, for the window
        window = self.opts.window
        points = self.points
        done: list[list[tuple]] = []  # finished packets, folded in after each batch
        finalize = done.append
        ranges = self.ranges
        add_range = ranges.add

        def evict(rec: list) -> None:
            """The record's window ended: finalize it, or the group of pieces it belongs to."""
            group = rec[GROUP]
            if group is None:
                _unlink(pending, rec)
                finalize(rec[2])
                rec[2] = None
                return
            for r in group:
                if r[2] is not None:
                    _unlink(pending, r)
            offsets = self.clocks.offsets
            offs = {i: offsets.get(p.node, 0.0) for i, p in enumerate(points)} if offsets else {}
            for obs in assemble(group, self._first_point, offs):
                finalize(obs)
            for r in group:
                r[2] = None

        inf = float("inf")
        evict_at = inf
        progress, share_read, due = self._progress, self.captures.share_read, 0.0
        for batch in merge_batches(streams, self._out_of_order):
            if progress is not None and (now := time.monotonic()) >= due:
                due = now + PROGRESS_EVERY
                progress(share_read())
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
                            evict(rec)
                    evict_at = queue[0][0] + window if queue else inf
                key = o[2]
                bit = o[10]
                rec = pending.get(key)
                if rec is None:
                    rec = [ts, bit, [o], key, None, None]
                    pending[key] = rec
                    queue.append(rec)
                    if key.__class__ is bytes and key[11:] != NO_DATA and not key[10] & 0x02:
                        add_range(rec)
                    if evict_at == inf:
                        evict_at = ts + window
                    continue
                while True:  # the first record of this identity not seen here yet (the usual: the first)
                    if not rec[1] & bit:
                        rec[1] |= bit
                        rec[2].append(o)
                        if rec[1] == full and rec[5] is None:
                            # Seen at every point there is: nothing more can come, finalize now (keeps memory low).
                            _unlink(pending, rec)
                            finalize(rec[2])
                            rec[2] = None
                        break
                    if rec[4] is None:  # seen here by every record: another packet of the same identity
                        rec[4] = nxt = [ts, bit, [o], key, None, None]
                        queue.append(nxt)
                        if key.__class__ is bytes and key[11:] != NO_DATA and not key[10] & 0x02:
                            add_range(nxt)
                        break
                    rec = rec[4]
        if progress is not None:
            progress(1.0)
        while queue:
            rec = queue.popleft()
            if rec[2] is not None:
                evict(rec)
        self._finalize_all(done)

    def _first_point(self, obs: list[tuple]) -> int:
        """Which of these sightings (one per point) is at the first point of the packet's way."""
        if len(obs) == 1:
            return obs[0][1]
        return obs[self.order.order(obs)[0][0]][1]

    def _out_of_order(self) -> None:
        """A file went back in time: from now on no shortcut that relies on arrival order being time order."""
        self.in_order = False

    def _finalize_all(self, done: Iterable[list[tuple]]) -> None:
        """Fold finished packets (each the list of its sightings), in order, into their flows."""
        flows, clocks = self.flows, self.clocks
        shapes, ends_info, flows_by_ck, samples = self.order.shapes, flows.ends, flows.by_key, clocks.samples
        in_order, keep, new_shape = self.in_order, self._keep, self.order.new_shape
        self.distinct += len(done)
        full = (1 << len(self.points)) - 1
        check_windows = not self.opts.captured_together
        window = clocks.window() if check_windows else None
        for obs in done:
            if not in_order and len(obs) > 1:
                # A file went back in time (multi-queue NICs, `-i any`): put the sightings in time
                # order (stable: ties keep arrival order), and shapes are shared again.
                obs.sort(key=_time)
            sig = tuple(map(_code, obs))
            shape = shapes.get(sig)
            if shape is None:
                shape = new_shape(obs, sig)
            elif shape.ties and any(obs[i][0] == obs[j][0] for i, j in shape.ties):
                shape = new_shape(obs, ())  # same instant: the roles decide, not this shape's arrival order
            for k, ia, ib, a, b in shape.steps:
                # sightings in time order: the node's last one and the next node's first
                d = obs[b][0] - obs[a][0]
                cur = samples.get(k)
                if cur is None or d < cur:
                    samples[k] = d
                    clocks.solve()
                    if check_windows:
                        window = clocks.window()
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
                        flow = flows_by_ck[ck] = FlowState(proto)
                        flow.cks.add(ck)
                    info[3] = flow
                    info[4] = flow.tallies.setdefault(sender, {})
                tallies = info[4]
            else:  # addresses or ports change on the way: NAT
                flow = flows.flow_of(proto, obs)
                if len(flow.nat) < 8:
                    flows.note_nat(flow, [obs[i] for i in shape.perm])
                tallies = flow.tallies.get(sender)
                if tallies is None:
                    tallies = flow.tallies[sender] = {}
            flow.packets += 1
            if first[0] < flow.first_time:
                flow.first_time = first[0]
            if flow.first_sender is None:
                flow.first_sender = sender
            flags = first[FLAGS]
            if proto == PROTO_TCP and flags is not None and flags & 0x12 == 0x02:
                flow.syn_sender = sender
            if not flow.http and first[HEAD] and first[HEAD].startswith(HTTP_STARTS):
                flow.http = True
            if keep:
                flow.records.append(obs)
            tally = shape.tally
            tallies[tally] = tallies.get(tally, 0) + 1
            key = first[2]
            if key.__class__ is bytes and key[11:] != NO_DATA:  # (TCP data: its bytes too)
                bt = flow.byte_tallies.get(sender)
                if bt is None:
                    bt = flow.byte_tallies[sender] = {}
                bt[tally] = bt.get(tally, 0) + int.from_bytes(key[11:15], "big")
            if shape.mask != full and check_windows:  # did the points that missed it capture at the time?
                # (judged with the clock offsets known by now; kept packets again at the end)
                before, after = clocks.uncovered(obs, shape.mask, window)
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
