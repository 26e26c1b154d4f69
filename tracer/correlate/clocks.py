"""Node clocks and capture windows: when each sighting happened on one reference clock, and
when each node was capturing.

Node clocks differ. The offsets are estimated from packets whose order TTL tells (each routing
step takes one): the fastest crossing between two nodes in each direction bounds the offset.
A node's capture window runs from the first frame of any of its points to the last: a packet
that missed a point while that node captured nothing was perhaps not lost there.

Per packet, sightings are read by index (o[0] T, o[1] P: tracer.capture.sightings).
"""

from __future__ import annotations

from tracer.capture.reader import PointState
from tracer.capture.sightings import points_mask

ONE_WAY_MAX = 0.01
"""Seconds the fastest of a flow's crossings from one capture point to the next may take before
(with no traffic the other way to tell) the rest is put down to the nodes' clocks."""

Window = tuple[float, float, dict[str, tuple[float, float]]]
"""(start, end) of the span every node was capturing in, and each node's own (start, end)."""


class Clocks:
    """Clock offsets of the nodes against the reference node, and the capture windows."""

    def __init__(self, points: list[PointState]):
        self.points = points  # (the reader's list: it grows while files are read)
        self.samples: dict[tuple[str, str], float] = {}
        """(node a, node b) -> min(t_b - t_a) over packets that went from a to b."""
        self.offsets: dict[str, float] = {}

    def solve(self) -> None:
        """Offsets relative to the reference node from the fastest crossing in each direction.

        b's clock may be ahead of a's by any offset that keeps both fastest crossings from going
        back in time: between -d_ba and d_ab. When 0 is among them the clocks need no correction
        (as in the lab, one kernel clock: a midpoint would only turn unequal one-way times into a
        made-up offset); else the midpoint (NTP's estimate: equal one-way times). With traffic one
        way only, a fastest crossing between 0 and ONE_WAY_MAX is taken as it is, else as all
        offset (the crossing then takes 0 s)."""
        est: dict[tuple[str, str], float] = {}
        for (a, b), d_ab in self.samples.items():
            d_ba = self.samples.get((b, a))
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
        nodes = sorted({n for pair in est for n in pair}, key=self.node_rank)
        offsets = {nodes[0]: 0.0}
        todo = [nodes[0]]
        while todo:
            a = todo.pop()
            for (x, y), off in est.items():
                if x == a and y not in offsets:
                    offsets[y] = offsets[a] + off
                    todo.append(y)
        self.offsets = offsets

    def node_rank(self, node: str):
        """The reference clock is the node with the most points (the first of them on a tie)."""
        count = sum(1 for p in self.points if p.node == node)
        for i, p in enumerate(self.points):
            if p.node == node:
                return (-count, i, node)
        return (0, len(self.points), node)

    def window(self) -> Window:
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

    def uncovered(self, obs: list[tuple], mask: int, window: Window) -> tuple[int, int]:
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

    def uncovered_either_way(self, obs: list[tuple], window: Window) -> int:
        """`uncovered` for a kept packet once everything is read: the points either way."""
        before, after = self.uncovered(obs, points_mask(obs), window)
        return before | after
