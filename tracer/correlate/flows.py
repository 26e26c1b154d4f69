"""Flows: what correlation keeps of each connection, and the table that finds a packet's flow.

In summary mode a flow holds counters only: how many packets took each shape (the points they
passed, the steps between them) per sender, and the translations seen. A packet whose addresses
or ports change on the way (NAT) joins the flows of both its ends into one.

Sightings are read by index here (o[5] is ENDS, o[1] P: tracer.capture.sightings), as on every
per-packet path.
"""

from __future__ import annotations

from collections import Counter

from tracer.capture.sightings import split_ends
from tracer.decode import PROTO_ARP


class FlowState:
    """Per-flow state. In summary mode it holds counters only."""

    __slots__ = ("cks", "proto", "syn_sender", "first_sender", "packets", "http", "records", "masks", "pairs",
                 "endpoints_seen", "nat", "tallies", "first_time", "unsure", "uncovered", "byte_tallies", "byte_masks")

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
        self.tallies: dict[tuple, dict] = {}  # sender endpoint -> {Shape.tally: packets}; -> masks, pairs
        self.byte_tallies: dict[tuple, dict] = {}  # sender endpoint -> {Shape.tally: TCP payload bytes}; -> byte_masks
        self.byte_masks: dict[tuple, dict] = {}  # sender endpoint -> {bitmask of points: TCP payload bytes}
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
        missed whose node captured nothing at the time (a bitmask; see tracer.correlate.clocks.Clocks.uncovered)."""

    def absorb(self, other: FlowState) -> None:
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
        for mine_all, theirs in ((self.tallies, other.tallies), (self.byte_tallies, other.byte_tallies)):
            for sender, tallies in theirs.items():  # (masks, pairs and endpoints come from these later)
                mine = mine_all.setdefault(sender, {})
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
        for sender, tallies in self.byte_tallies.items():
            masks = self.byte_masks.setdefault(sender, {})
            for (mask, _), n in tallies.items():
                masks[mask] = masks.get(mask, 0) + n


class FlowTable:
    """Every flow, by the key of its addresses and ports (either way round); `ends` caches, per
    `ends` bytes of a sighting, [protocol, flow key, sender endpoint, its flow, that flow's
    tallies of it] (the engine's per-packet lookup)."""

    def __init__(self):
        self.by_key: dict[tuple, FlowState] = {}
        self.ends: dict[bytes, list] = {}

    def flow_of(self, proto: int, obs: list[tuple]) -> FlowState:
        """The flow of a packet whose addresses or ports change on the way (NAT): one flow for all."""
        cks = set()
        for o in obs:
            a, b = split_ends(o[5])
            cks.add((proto, a, b) if a <= b else (proto, b, a))
        flow = None
        for ck in cks:
            other = self.by_key.get(ck)
            if other is None or other is flow:
                continue
            if flow is None:
                flow = other
            else:
                big, small = (flow, other) if flow.packets >= other.packets else (other, flow)
                big.absorb(small)
                self.ends.clear()  # (it points at flows and their tallies: `small` is gone)
                for c in small.cks:
                    self.by_key[c] = big
                flow = big
        if flow is None:
            flow = FlowState(proto)
        for ck in cks:
            if ck not in flow.cks:
                flow.cks.add(ck)
                self.by_key[ck] = flow
        return flow

    @staticmethod
    def note_nat(flow: FlowState, seq: list[tuple]) -> None:
        """The translations between consecutive sightings of a packet, in the order of its way."""
        prev = split_ends(seq[0][5])
        for o in seq[1:]:
            cur = split_ends(o[5])
            for kind, before, after in (("dnat", prev[1], cur[1]), ("snat", prev[0], cur[0])):
                if before != after:
                    entry = (kind, before, after, o[1])
                    if entry not in flow.nat:  # (one per point where it showed first: describe picks the earliest)
                        flow.nat.append(entry)
            prev = cur

    def ordered(self) -> list[FlowState]:
        """Each flow once, in the order every view numbers them: the HTTP flows first, in the order
        they began (request order: `follow --count 5`'s flow 1 is request 1), then the other IP
        flows, then ARP, each by packets, then by time."""
        seen, out = set(), []
        for f in self.by_key.values():
            if id(f) not in seen:
                seen.add(id(f))
                out.append(f)
        out.sort(key=lambda f: (0, f.first_time, 0) if f.http else (1 + (f.proto == PROTO_ARP), -f.packets, f.first_time))
        return out
