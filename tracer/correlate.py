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

import heapq
import os
import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter

from tracer.decode import PROTO_TCP, PROTO_UDP, VXLAN_PORTS, Frame, decode
from tracer.errors import CaptureFileError
from tracer.pcapio import open_capture
from tracer.roles import INGRESS_RANK, infer_role, role_from_name

CALICO_MAC = b"\xee" * 6
HTTP_STARTS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"HTTP/1.", b"CONNECT ")
EGRESS_RANK = {"pod-veth": 0, "bridge": 1, "tunnel": 2, "underlay": 3, "unknown": 4}
RESERVOIR = 4096


@dataclass(frozen=True, kw_only=True)
class CaptureInput:
    """One capture file and the point it belongs to."""

    path: str
    node: str
    interface: str
    forced: bool = False
    """Given as --point NAME=FILE: every interface in the file is this point."""


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


class _Point:
    __slots__ = ("id", "node", "interface", "frames", "undecoded", "encapsulated", "calico_mac", "files",
                 "ips", "role")

    def __init__(self, pid: str, node: str, interface: str):
        self.id, self.node, self.interface = pid, node, interface
        self.frames = self.undecoded = self.encapsulated = 0
        self.calico_mac = False
        self.files: list[str] = []
        self.ips: set[bytes] = set()  # inner IPs seen (to tell whose pod veth this is)
        self.role = role_from_name(interface) or "unknown"  # refined from traffic at the end


class Sighting:
    """One frame of a packet at one point (internal; becomes a model.Hop). Slotted: one per frame."""

    __slots__ = ("point", "time", "frame", "direction")

    def __init__(self, point: int, time: float, frame: Frame, direction: str = "?"):
        self.point = point
        self.time = time
        self.frame = frame
        self.direction = direction


class _Flow:
    """Per-flow state. In summary mode it holds counters only."""

    __slots__ = ("cks", "proto", "syn_sender", "first_sender", "packets", "http", "records", "masks", "pairs",
                 "endpoints_seen", "nat")

    def __init__(self, proto: int):
        self.cks: set = set()
        self.proto = proto
        self.syn_sender = None
        self.first_sender = None
        self.packets = 0
        self.http = False
        self.records: list[list[Sighting]] = []
        self.masks: dict[tuple, Counter] = {}   # sender endpoint -> Counter(bitmask of points)
        self.pairs: dict[tuple, Counter] = {}   # sender endpoint -> Counter((point a, point b)) consecutive
        self.endpoints_seen: Counter = Counter()
        # (kind, (ip, port) before, (ip, port) after, point index where first seen translated)
        self.nat: list[tuple] = []

    def absorb(self, other: _Flow) -> None:
        self.cks |= other.cks
        self.syn_sender = self.syn_sender or other.syn_sender
        self.first_sender = self.first_sender or other.first_sender
        self.packets += other.packets
        self.http |= other.http
        self.records.extend(other.records)
        for src, dst in ((other.masks, self.masks), (other.pairs, self.pairs)):
            for k, c in src.items():
                dst.setdefault(k, Counter()).update(c)
        self.endpoints_seen.update(other.endpoints_seen)
        self.nat.extend(n for n in other.nat if n not in self.nat)


class _Reservoir:
    """A bounded uniform sample: percentiles without memory growing with packet count."""

    __slots__ = ("n", "items", "rng")

    def __init__(self, rng: random.Random):
        self.n = 0
        self.items: list[float] = []
        self.rng = rng

    def add(self, x: float) -> None:
        self.n += 1
        if len(self.items) < RESERVOIR:
            self.items.append(x)
        else:
            j = int(self.rng.random() * self.n)
            if j < RESERVOIR:
                self.items[j] = x

    def percentile(self, q: float, shift: float = 0.0) -> float | None:
        if not self.items:
            return None
        s = sorted(self.items)
        return s[min(len(s) - 1, int(q * len(s)))] + shift


def identity(fr: Frame):
    """What stays the same for one packet at every point of its way (inner packet only)."""
    p = fr.proto
    if fr.fragment:
        return (p, fr.ip_id, -1, fr.payload_len, fr.ip_len)
    if p == PROTO_TCP:
        return (fr.ip_id, fr.tcp_seq, fr.tcp_ack, fr.tcp_flags, fr.payload_len)
    if p == PROTO_UDP:
        off = fr.payload_offset
        return (p, fr.ip_id, fr.payload_len, fr.data[off:off + 24] if off >= 0 else b"")
    return (p, fr.ip_id, fr.ip_len, fr.icmp_type, fr.icmp_code, fr.icmp_id, fr.icmp_seq)


class Correlator:
    """Feed it capture inputs; `run()` returns the internal result that `build_trace` turns into a model."""

    def __init__(self, inputs: Iterable[CaptureInput], options: Options | None = None):
        self.inputs = list(inputs)
        self.opts = options or Options()
        self.points: list[_Point] = []
        self.point_index: dict[str, int] = {}
        self.warnings: list[str] = []
        self.flows_by_ck: dict[tuple, _Flow] = {}
        self.offset_samples: dict[tuple[str, str], float] = {}  # (node a, node b) -> min(t_b - t_a), a before b
        self.offsets: dict[str, float] = {}
        self.segments: dict[tuple[int, int], _Reservoir] = {}
        self.seg_raw: dict[tuple[int, int], tuple[str, str]] = {}
        self.rng = random.Random(4096)
        self.total_frames = 0
        self.distinct = 0

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

    def _read(self, inp: CaptureInput) -> Iterator[tuple[float, int, Frame]]:
        cap, records = open_capture(inp.path)
        vxlan_ports = self.opts.vxlan_ports
        by_iface: list[int] = []
        multi = None
        try:
            for rec in records:
                i = rec.interface
                if i >= len(by_iface):
                    if multi is None:
                        multi = len(cap.interfaces) > 1
                    while len(by_iface) <= i:
                        iface = cap.interfaces[len(by_iface)]
                        name = iface.name or ""
                        if inp.forced or not name:
                            by_iface.append(self._point(inp.node, inp.interface, inp.path))
                        elif "/" in name:
                            node, _, ifname = name.partition("/")
                            by_iface.append(self._point(node, ifname, inp.path))
                        elif multi:
                            by_iface.append(self._point(inp.node, name, inp.path))
                        else:
                            by_iface.append(self._point(inp.node, inp.interface, inp.path))
                fr = decode(cap.interfaces[i].linktype, rec.data, rec.orig_len, vxlan_ports)
                yield rec.time, by_iface[i], fr
        finally:
            for w in cap.warnings:
                self.warnings.append(f"{inp.path}: {w}")
        if not by_iface:
            # A capture that saw nothing is still a point of the way: it tells where packets did not go.
            named = [i.name for i in cap.interfaces if i.name and "/" in i.name and not inp.forced]
            for name in named:
                node, _, ifname = name.partition("/")
                self._point(node, ifname, inp.path)
            if not named:
                self._point(inp.node, inp.interface, inp.path)

    # ---- the main loop ----

    def run(self) -> Correlator:
        # Open every file first, so that a bad one is refused before any work is done.
        streams = []
        for inp in self.inputs:
            gen = self._read(inp)
            try:
                first = next(gen)
            except StopIteration:
                continue
            streams.append(_prepend(first, gen))
        merged = heapq.merge(*streams, key=itemgetter(0))
        pending: dict = {}
        queue: deque = deque()
        window = self.opts.window
        points = self.points
        finalize = self._finalize
        total = 0
        for ts, pidx, fr in merged:
            total += 1
            pt = points[pidx]
            pt.frames += 1
            if fr.tunnels:
                pt.encapsulated += 1
            if fr.eth_src == CALICO_MAC or fr.eth_dst == CALICO_MAC:
                pt.calico_mac = True
            if fr.undecoded is not None and fr.arp is None:
                pt.undecoded += 1
            if fr.ip_src is None or fr.proto is None:
                continue
            if len(pt.ips) < 64:
                pt.ips.add(fr.ip_src)
                pt.ips.add(fr.ip_dst)
            limit = ts - window
            while queue and queue[0][0] < limit:
                rec = queue.popleft()
                if rec[2] is None:
                    continue  # finalized early
                lst = pending[rec[3]]
                if len(lst) == 1:
                    del pending[rec[3]]
                else:
                    lst.remove(rec)
                finalize(rec[2])
            key = identity(fr)
            bit = 1 << pidx
            lst = pending.get(key)
            if lst is None:
                rec = [ts, bit, [(pidx, ts, fr)], key]
                pending[key] = [rec]
                queue.append(rec)
                continue
            for rec in lst:
                if not rec[1] & bit:
                    rec[1] |= bit
                    rec[2].append((pidx, ts, fr))
                    if rec[1] == (1 << len(points)) - 1:
                        # Seen at every point there is: nothing more can come, finalize now (keeps memory low).
                        if len(lst) == 1:
                            del pending[key]
                        else:
                            lst.remove(rec)
                        finalize(rec[2])
                        rec[2] = None
                    break
            else:
                rec = [ts, bit, [(pidx, ts, fr)], key]
                lst.append(rec)
                queue.append(rec)
        while queue:
            obs = queue.popleft()[2]
            if obs is not None:
                finalize(obs)
        self.total_frames = total
        for pt in self.points:
            pt.role = "pod-veth" if pt.node in self.opts.pods else infer_role(
                pt.interface, encapsulated=pt.encapsulated, frames=pt.frames, calico_mac_seen=pt.calico_mac)
        self._solve_offsets()
        if self.opts.keep_packets:
            # Put every kept packet in order once more, now with the final clock offsets.
            for flow in self.flows():
                flow.records = [self.order([(s.point, s.time, s.frame) for s in r])[0] for r in flow.records]
        return self

    # ---- per packet ----

    def order(self, obs: list[tuple[int, float, Frame]]) -> tuple[list[Sighting], list[tuple[str, str, float]]]:
        """Put one packet's sightings in the order of its way; return also the strict node steps."""
        points = self.points
        groups: dict[str, list] = {}
        for o in obs:
            groups.setdefault(points[o[0]].node, []).append(o)
        keyed = []
        for node, g in groups.items():
            ttls = [o[2].ttl for o in g]
            hi, lo = max(ttls), min(ttls)
            keyed.append(((-hi, -lo), min(o[1] for o in g) - self.offsets.get(node, 0.0), node, g, hi, lo))
        keyed.sort(key=lambda k: (k[0], k[1]))
        out: list[Sighting] = []
        steps = []
        last = len(keyed) - 1
        for gi, (ttlkey, _t, node, g, hi, lo) in enumerate(keyed):
            routed = hi != lo
            leaving = gi == 0 and last > 0

            def rank(o, hi=hi, routed=routed, leaving=leaving):
                role = points[o[0]].role
                ingress = (o[2].ttl == hi) if routed else not leaving
                if ingress:
                    return (-o[2].ttl, o[1], INGRESS_RANK.get(role, 4), len(o[2].tunnels) and -1)
                return (-o[2].ttl, o[1], EGRESS_RANK.get(role, 4), len(o[2].tunnels))

            g.sort(key=rank)
            for o in g:
                if routed:
                    d = "in" if o[2].ttl == hi else "out"
                elif gi == 0 and last > 0:
                    d = "out"
                elif gi == last and last > 0:
                    d = "in"
                else:
                    d = "?"
                out.append(Sighting(o[0], o[1], o[2], d))
            if gi < last and ttlkey != keyed[gi + 1][0]:
                nxt = keyed[gi + 1]
                steps.append((node, nxt[2], min(o[1] for o in nxt[3]) - max(o[1] for o in g)))
        return out, steps

    def _finalize(self, obs: list[tuple[int, float, Frame]]) -> None:
        self.distinct += 1
        if len(obs) > 1:
            seq, steps = self.order(obs)
            for a, b, d in steps:
                k = (a, b)
                cur = self.offset_samples.get(k)
                if cur is None or d < cur:
                    self.offset_samples[k] = d
                    self._solve_offsets()
        else:
            o = obs[0]
            seq = [Sighting(o[0], o[1], o[2])]
        first = seq[0].frame
        proto = first.proto
        sender = (first.ip_src, first.sport)
        cks = set()
        for s in seq:
            f = s.frame
            a, b = (f.ip_src, f.sport), (f.ip_dst, f.dport)
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
                for c in small.cks:
                    self.flows_by_ck[c] = big
                flow = big
        if flow is None:
            flow = _Flow(proto)
        for ck in cks:
            if ck not in flow.cks:
                flow.cks.add(ck)
                self.flows_by_ck[ck] = flow
        flow.packets += 1
        flow.endpoints_seen[sender] += 1
        if flow.first_sender is None:
            flow.first_sender = sender
        if proto == PROTO_TCP and first.tcp_flags is not None and first.tcp_flags & 0x12 == 0x02:
            flow.syn_sender = sender
        if not flow.http and first.payload_len and first.payload_offset >= 0:
            if first.data[first.payload_offset:first.payload_offset + 8].startswith(HTTP_STARTS):
                flow.http = True
        if len(cks) > 1 and len(flow.nat) < 8:
            self._note_nat(flow, seq)
        if self.opts.keep_packets:
            flow.records.append(seq)
        mask = 0
        for s in seq:
            mask |= 1 << s.point
        flow.masks.setdefault(sender, Counter())[mask] += 1
        pairs = flow.pairs.setdefault(sender, Counter())
        for x, y in zip(seq, seq[1:]):
            seg = (x.point, y.point)
            pairs[seg] += 1
            res = self.segments.get(seg)
            if res is None:
                res = self.segments[seg] = _Reservoir(self.rng)
                self.seg_raw[seg] = (self.points[x.point].node, self.points[y.point].node)
            res.add(y.time - x.time)

    @staticmethod
    def _note_nat(flow: _Flow, seq: list[Sighting]) -> None:
        prev = seq[0].frame
        for s in seq[1:]:
            f = s.frame
            for kind, before, after in (("dnat", (prev.ip_dst, prev.dport), (f.ip_dst, f.dport)),
                                        ("snat", (prev.ip_src, prev.sport), (f.ip_src, f.sport))):
                if before != after:
                    entry = (kind, before, after, s.point)
                    if not any(n[:3] == entry[:3] for n in flow.nat):
                        flow.nat.append(entry)
            prev = f

    # ---- clocks ----

    def _solve_offsets(self) -> None:
        """Offsets relative to the reference node from the fastest crossing in each direction."""
        est: dict[tuple[str, str], float] = {}
        for (a, b), d_ab in self.offset_samples.items():
            d_ba = self.offset_samples.get((b, a))
            off = (d_ab - d_ba) / 2 if d_ba is not None else d_ab
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
        """Each flow once, in the order every view shows them: HTTP first, then by packets."""
        seen, out = set(), []
        for f in self.flows_by_ck.values():
            if id(f) not in seen:
                seen.add(id(f))
                out.append(f)
        out.sort(key=lambda f: (not f.http, -f.packets))
        return out


def _prepend(first, rest):
    yield first
    yield from rest


def inputs_from_paths(paths: Iterable[str], points: Iterable[str] = ()) -> list[CaptureInput]:
    """Capture inputs from the command line: directories laid out as <node>/<interface>.pcap[ng],
    single files (node = parent directory name, interface = file stem), and NAME=FILE overrides."""
    out: list[CaptureInput] = []
    for spec in points:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CaptureFileError(f"--point {spec!r}: expected NAME=FILE", "e.g. --point worker1/eth1=node1-eth1.pcap")
        node, _, iface = name.rpartition("/")
        out.append(CaptureInput(path=path, node=node or "-", interface=iface, forced=True))
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


def _file_input(path: str) -> CaptureInput:
    base = os.path.basename(path)
    stem = base
    for suf in CAPTURE_SUFFIXES:
        if base.endswith(suf):
            stem = base[: -len(suf)]
            break
    node = os.path.basename(os.path.dirname(os.path.abspath(path))) or "-"
    return CaptureInput(path=path, node=node, interface=stem)


def _scan_dir(root: str) -> list[CaptureInput]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(CAPTURE_SUFFIXES):
                out.append(_file_input(os.path.join(dirpath, name)))
    return out
