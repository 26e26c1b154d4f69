"""The same bytes in other pieces: TCP data that TSO/GSO cut, or GRO merged, between two points.

A sender hands its stack TCP data as one unit, on a TSO/GSO device a super-frame of up to
64 KiB; GSO or the NIC cuts it into MTU-sized frames for the wire (sequence numbers advance by
the MSS, the IP ID by one per frame, PSH and FIN stay on the last), and GRO on the receiver
merges frames again, into other sizes (DATAPATHS.md §9). Each frame covers a range of its
direction's sequence space; the frames of the same bytes at other points have other identities
(IP ID, sequence number, flags, length), so the engine's one-to-one match finds none of them.

`Ranges` indexes the engine's pending records of TCP data by acknowledgement number and range
(a stream: the pieces of one unit share the ACK, TSO copies it and GRO merges only equal ones;
the sequence space is 32 random bits, so another connection's bytes do not meet these).
A record whose range overlaps another's with other boundaries joins its group; the engine
holds a grouped record until the group's first record's window ends, then `assemble` makes
its packets: the units are the pieces at the first point of the way (the sender's side), each
other point's pieces are the ones that carried its bytes there. The same range sent again (a
retransmission: another IP ID, later) has equal boundaries: never grouped with the first, a
packet of its own; where it is grouped through a super-frame, each point's piece goes to the
latest sending of those bytes before it.

A record is a list [first time, points bitmask, sightings, identity, next, group] (see
Correlator._loop); group is the list of the records grouped with it (shared) or None, the
sequence range is its identity's (`span`).
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from operator import itemgetter

from tracer.capture.sightings import FRAME

GROUP = 5
"""The slot of a pending record that holds its group (see Correlator._loop)."""
NO_DATA = b"\x00\x00\x00\x00"
"""The length field of a TCP identity (tracer.capture.sightings.tcp_key) without payload."""
SWEEP_EVERY = 4096
"""New streams between two sweeps of streams whose records are all finalized."""
_SPAN = struct.Struct("!2xII1xI")  # (seq, ack, payload length) of a TCP identity (tcp_key)


def span(rec: list) -> tuple[int, int]:
    """A record's sequence range [start, end) (its identity's)."""
    s, _, n = _SPAN.unpack_from(rec[3])
    return s, s + n


class Assembled(list):
    """The sightings of a packet whose bytes other frames carried at some points (one sighting
    per point, as for any packet: the first frame there), and how they were carried."""

    __slots__ = ("carried", "unit_bytes")

    def __init__(self, sightings: list[tuple], carried: dict[int, tuple], unit_bytes: int):
        super().__init__(sightings)
        self.carried = carried
        """point -> (frames, their sizes, payload bytes of the packet they carried, whether a
        frame carried bytes beyond the packet's too (merged with the next)); a point where only
        part of the bytes arrived has no sighting, only this."""
        self.unit_bytes = unit_bytes


class _Stream:
    """The records of one stream (more than one): their starts, sorted, and the longest range."""

    __slots__ = ("starts", "recs", "longest")

    def __init__(self, a: list, b: list):
        (sa, ea), (sb, eb) = span(a), span(b)
        if sb < sa:
            a, b, sa, sb = b, a, sb, sa
        self.starts, self.recs, self.longest = [sa, sb], [a, b], max(ea - sa, eb - sb)


class Ranges:
    """Pending TCP data records by stream and range, and the groups of overlapping ones."""

    __slots__ = ("streams", "grouped", "_new")

    def __init__(self):
        self.streams: dict[int, list | _Stream] = {}
        """ACK number -> its one record (the usual), or a _Stream of them."""
        self.grouped = 0
        """Records that joined a group (pieces of other records' bytes)."""
        self._new = 0

    def add(self, rec: list) -> None:
        """Index a new record of TCP data (its identity has a payload); group it with the
        records whose bytes it shares with other boundaries."""
        s, ack, n = _SPAN.unpack_from(rec[3])
        e = s + n
        streams = self.streams
        st = streams.get(ack)
        if st is None or (st.__class__ is list and st[2] is None):  # (the usual: a stream's first)
            streams[ack] = rec
            self._new += 1
            if self._new >= SWEEP_EVERY:
                self._sweep()
            return
        if st.__class__ is list:  # its second record
            os_, oe = span(st)
            if os_ < e and oe > s and (os_ != s or oe != e):
                self._join(rec, st)
            streams[ack] = _Stream(st, rec)
            return
        starts, recs = st.starts, st.recs
        if recs[0][2] is None:  # finalized records at the front (the usual: in order of time and bytes)
            k = 1
            while k < len(recs) and recs[k][2] is None:
                k += 1
            del starts[:k], recs[:k]
        if n > st.longest:
            st.longest = n
        lo = bisect_left(starts, s - st.longest)
        hi = bisect_left(starts, e, lo)
        for k in range(lo, hi):
            other = recs[k]
            if other[2] is not None:
                os_, oe = span(other)
                if oe > s and (os_ != s or oe != e):
                    self._join(rec, other)
        k = bisect_right(starts, s)
        starts.insert(k, s)
        recs.insert(k, rec)

    def _join(self, a: list, b: list) -> None:
        ga, gb = a[GROUP], b[GROUP]
        if ga is None and gb is None:
            a[GROUP] = b[GROUP] = [a, b]
            self.grouped += 2
        elif ga is None:
            gb.append(a)
            a[GROUP] = gb
            self.grouped += 1
        elif gb is None:
            ga.append(b)
            b[GROUP] = ga
            self.grouped += 1
        elif ga is not gb:
            if len(ga) < len(gb):
                ga, gb = gb, ga
            ga.extend(gb)
            for r in gb:
                r[GROUP] = ga

    def _sweep(self) -> None:
        """Forget the streams whose records are all finalized (an ACK number the connection left)."""
        self._new = 0
        dead = [k for k, st in self.streams.items()
                if (st[2] is None if st.__class__ is list else all(r[2] is None for r in st.recs))]
        for k in dead:
            del self.streams[k]


def assemble(group: list[list], first_point, offsets: dict[int, float]) -> list[list[tuple]]:
    """The packets of a group of records (each record's sightings taken: the caller has taken
    them out of pending): one per piece at the way's first point, with the pieces that carried
    its bytes at each other point, then whatever no such piece covered, record by record.

    `first_point(sightings)` says which point of one sighting per point is the first of the way;
    `offsets` is each point's clock offset (its node's) against the reference clock."""
    pieces: dict[int, list] = {}  # point -> [(time on the reference clock, start, end, sighting, record)]
    earliest: dict[int, tuple] = {}
    for rec in group:
        s, e = span(rec)
        for o in rec[2]:
            p = o[1]
            t = o[0] - offsets.get(p, 0.0)
            pieces.setdefault(p, []).append((t, s, e, o, rec))
            cur = earliest.get(p)
            if cur is None or t < cur[0]:
                earliest[p] = (t, o)
    first = first_point([o for _, o in earliest.values()])
    units = sorted(pieces.pop(first), key=_time)
    own = {id(u[4]): i for i, u in enumerate(units)}  # a unit's record -> the unit
    by_start = sorted(range(len(units)), key=lambda i: units[i][1])
    starts = [units[i][1] for i in by_start]
    longest = max((u[2] - u[1] for u in units), default=0)
    covered: dict[int, dict[int, list]] = {}  # unit index -> point -> its pieces there
    used: set[int] = set()  # id() of the sightings that went into a unit
    for p, ps in pieces.items():
        for piece in ps:
            t, s, e = piece[0], piece[1], piece[2]
            mine = own.get(id(piece[4]))
            if mine is not None:  # (the unit's own frame, the same IP packet: its, and no other's)
                chosen = [mine]
            else:
                lo, hi = bisect_left(starts, s - longest), bisect_left(starts, e)
                cands = sorted(i for i in by_start[lo:hi] if units[i][2] > s)  # (overlapping it: a bisect, not a scan)
                chosen = [i for i in cands if _sent_last(units, cands, i, t)]
            for i in chosen:
                covered.setdefault(i, {}).setdefault(p, []).append(piece)
                used.add(id(piece[3]))
    out: list[list[tuple]] = []
    for i, (t, s, e, o, rec) in enumerate(units):
        used.add(id(o))
        sightings = [o]
        carried: dict[int, tuple] = {}
        for p, ps in covered.get(i, {}).items():
            ps.sort(key=_time)
            got = _union(ps, s, e)
            sizes = tuple(_size(x[3], x[2] - x[1]) for x in ps)
            beyond = any(x[1] < s or x[2] > e for x in ps)
            if len(ps) != 1 or beyond or ps[0][1] != s or ps[0][2] != e:
                carried[p] = (len(ps), sizes, got, beyond)
            if got == e - s:
                sightings.append(ps[0][3])
        sightings.sort(key=_time)  # (in time order, as any packet's: its shape is shared by that)
        if carried:
            out.append(Assembled(sightings, carried, e - s))
        else:
            out.append(sightings)
    for rec in group:  # bytes no piece at the first point covered: packets as the records were
        rest = [o for o in rec[2] if id(o) not in used]
        if rest:
            out.append(rest)
    return out


def _sent_last(units: list, cands: list[int], i: int, t: float) -> bool:
    """Whether unit i is the sending of its bytes that a piece seen at `t` carried: the latest
    of the overlapping sendings at or before `t` (the earliest, should clocks put every one after)."""
    u = units[i]
    others = [units[j] for j in cands if j != i and units[j][1] < u[2] and units[j][2] > u[1]]
    if u[0] <= t:
        return not any(u[0] < o[0] <= t for o in others)
    return not any(o[0] < u[0] for o in others)


_time = itemgetter(0)
"""A piece's time (its first field), as a sighting's (T)."""


def _size(o: tuple, payload: int) -> int:
    """A piece's frame length on the wire where its frame was kept, else its payload's."""
    fr = o[FRAME]
    return fr.orig_len if fr is not None else payload


def _union(pieces: list, s: int, e: int) -> int:
    """Bytes of [s, e) the pieces cover."""
    spans = sorted((max(x[1], s), min(x[2], e)) for x in pieces)
    total, reach = 0, s
    for a, b in spans:
        if b <= reach:
            continue
        total += b - max(a, reach)
        reach = b
    return total
