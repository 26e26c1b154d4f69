"""The order of a packet's way: its sightings put in the order it passed the points.

Order of the way, not of timestamps. Node clocks differ, so hops are grouped by node; within a
node its own clock orders them; nodes are ordered by the TTL the packet had there (every routing
step takes one), and only where TTL cannot tell, by timestamps corrected with the clock offsets
(tracer.correlate.clocks). Within a node, the points' roles order sightings of one instant.

Packets of the same kind (same points, TTLs and tunnels, seen in the same order) share one
shape, computed once: that is most of what makes correlation fast. Sightings are read by index
on this path (o[0] T, o[1] P: tracer.capture.sightings), TTL/CODE/FRAME by name.
"""

from __future__ import annotations

from tracer.capture.reader import PointState
from tracer.capture.roles import EGRESS_RANK, INGRESS_RANK
from tracer.capture.sightings import CODE, FRAME, TTL, points_mask
from tracer.correlate.clocks import Clocks
from tracer.correlate.latency import LatencySamples, Sampler
from tracer.decode import Frame

class Shape:
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
        Correlator.in_order)): clock samples."""
        self.mask = mask = points_mask(obs)
        self.segs = [((obs[i][1], obs[j][1]), i, j) for i, j in zip(perm, perm[1:])]
        """((point, next point), index, next index) for each step of the way."""
        self.tally = (mask, tuple(seg for seg, _, _ in self.segs))
        """What the flow counts of it: the points it passed and the steps between them."""
        self.sampler: Sampler | None = None
        """The latency sample of the packets that went this way (None: a lone sighting)."""
        self.pairs: tuple[tuple[int, int], ...] = ()
        """(index, next index) of each step of the way, in the order of the sampler's items."""
        self.ties: tuple[tuple[int, int], ...] = ()
        """Pairs whose order a tie of timestamps would turn (see order)."""


class PacketSighting:
    """One sighting of a kept packet, in the order of its way, with its direction there (becomes a
    model.Hop). Slotted: one per frame."""

    __slots__ = ("point", "time", "frame", "direction", "carried")

    def __init__(self, point: int, time: float, frame: Frame, direction: str = "?", carried: tuple | None = None):
        self.point = point
        self.time = time
        self.frame = frame
        self.direction = direction
        self.carried = carried
        """How other frames carried the packet's bytes here, if they did (see pieces.Assembled)."""


class HopOrder:
    """Orders packets' sightings, and keeps the shapes worked out so far (`shapes`, by the
    sightings' codes in arrival order)."""

    def __init__(self, points: list[PointState], clocks: Clocks, latency: LatencySamples):
        self.points = points
        self.clocks = clocks
        self.latency = latency
        self.shapes: dict[tuple, Shape] = {}

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
            keyed.append(((-hi, -lo), min(obs[i][0] for i in g) - self.clocks.offsets.get(node, 0.0), node, g, hi, lo))
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
            # should the two carry the same timestamp, the roles decide (see new_shape).
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

    def new_shape(self, obs: list[tuple], sig: tuple) -> Shape:
        """Work out a packet's shape; keep it under `sig` (its sightings' codes in arrival order)
        for the packets like it, unless it may not be shared: when only timestamps order its
        nodes, or when two sightings that a tie would turn carry the same timestamp (the order
        then falls to the points' roles, not to arrival). `sig` is () when it may not be shared
        anyway (two sightings of one instant). The engine hands sightings over in time order."""
        if len(obs) == 1:
            shape = Shape((0,), ("?",), [], obs)
        else:
            perm, dirs, steps, by_ttl, ties = self.order(obs)
            shape = Shape(perm, dirs, steps, obs)
            shape.ties = ties
            if not by_ttl or any(obs[i][0] == obs[j][0] for i, j in ties):
                sig = ()
        if shape.segs:
            shape.sampler = self.latency.sampler(shape.tally[1])
            shape.pairs = tuple((i, j) for _, i, j in shape.segs)
        if sig:
            self.shapes[sig] = shape
        return shape

    def set_out(self, seq: list[PacketSighting]) -> float:
        """When a packet was at the first point of its way, on the reference node's clock."""
        return seq[0].time - self.clocks.offsets.get(self.points[seq[0].point].node, 0.0)

    def sightings(self, obs: list[tuple]) -> list[PacketSighting]:
        """A kept packet's sightings in the order of its way."""
        perm, dirs, _, _, _ = self.order(obs)
        carried = getattr(obs, "carried", None)
        if carried:
            return [PacketSighting(obs[i][1], obs[i][0], obs[i][FRAME], d, carried.get(obs[i][1]))
                    for i, d in zip(perm, dirs)]
        return [PacketSighting(obs[i][1], obs[i][0], obs[i][FRAME], d) for i, d in zip(perm, dirs)]
