"""The ways of a flow: the points each direction passes, in order.

From the data (the majority order of every pair of points the packets passed), mirrored
between request and response, completed by the expected way (path.json) or by the points'
roles; and what a packet that passed some of the points adds up to on its way.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence

from tracer.capture.roles import INGRESS_RANK
from tracer.correlate.flows import FlowState
from tracer.correlate.result import Correlation
from tracer.decode import PROTO_ARP


def visible_way(way: tuple[int, ...], mask: int, blind: frozenset[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`way` without the points the data path may bypass (`blind`) that the packets in `mask`
    went by unseen, and those points: where they were not visible (neither lost nor a gap). A
    blind point went by is one after the first sighting and before a later one, or after the last
    when nothing but blind points follows it (a packet that stopped before is still lost there)."""
    if not blind:
        return way, ()
    seen = [k for k, p in enumerate(way) if mask >> p & 1]
    if not seen:
        return way, ()
    first, last = seen[0], seen[-1]
    to_end = all(p in blind for p in way[last + 1:])
    unseen = tuple(p for k, p in enumerate(way)
                   if p in blind and not mask >> p & 1 and k > first and (k < last or to_end))
    return (tuple(p for p in way if p not in unseen), unseen) if unseen else (way, ())


def mask_info(pts, mask: int, way: tuple[int, ...], blind: frozenset[int] = frozenset()) -> tuple:
    """What the packets that passed the points in `mask` add up to, on `way`: the points' ids,
    whether they reached its end, where they stopped if not and the point of the way they did
    not reach (its index), each step of the way they entered with whether they were lost on it or
    only not captured at its end (seen further on: a gap, not a loss), whether they passed a
    point of the way unseen, and whether a point of it their data path may bypass did not see
    them (not visible there: the way goes on without it)."""
    way, invisible = visible_way(way, mask, blind)
    ids = tuple(pts[i].id for i in range(len(pts)) if mask >> i & 1)
    got_there = bool(way) and bool(mask >> way[-1] & 1)
    stopped_at = next_point = None
    if way and not got_there:
        seen = [k for k, p in enumerate(way) if mask >> p & 1]
        if seen:
            stopped_at, next_point = pts[way[seen[-1]]].id, way[seen[-1] + 1]
    last = max((k for k, p in enumerate(way) if mask >> p & 1), default=-1)
    segs = tuple(((a, b), missed and k + 1 > last, missed and k + 1 < last)
                 for k, (a, b) in enumerate(zip(way, way[1:])) if mask >> a & 1 for missed in (not mask >> b & 1,))
    return ids, got_there, stopped_at, next_point, segs, any(s[2] for s in segs), bool(invisible)


def flow_ways(c: Correlation, f: FlowState, client: tuple, cache: dict | None = None) -> dict[str, list[int]]:
    """The ordered points of each direction: from the data, mirrored, completed by the path hint and roles.

    What decides them (the points each direction passed, the majority order of each pair of
    points, the server's addresses) is the same for most flows of a capture: `cache` keeps the
    answer per such key.
    """
    # (and whether it is ARP, whose way the hint does not complete)
    servers = (f.proto == PROTO_ARP, frozenset(ck[1][0] for ck in f.cks) | frozenset(ck[2][0] for ck in f.cks))
    quick = None
    if cache is not None and f.tallies:
        # the tallies' keys are shared by every flow of the same kinds: a cheap key to the quick key
        raw = tuple((sender == client, tuple(t)) for sender, t in f.tallies.items())
        memo = cache.setdefault(_QUICK, {})
        quick = memo.get(raw, _QUICK)
        if quick is _QUICK:
            quick = memo[raw] = _quick_key(f, client)
    if cache is not None and quick is not None and (quick, servers) in cache:
        return {d: list(w) for d, w in cache[(quick, servers)].items()}
    by_dir: dict[str, tuple[Counter, Counter]] = {}
    for sender, masks in f.masks.items():
        d = "request" if sender == client else "response"
        pairs, m = by_dir.setdefault(d, (Counter(), Counter()))
        pairs.update(f.pairs.get(sender, {}))
        m.update(masks)
    shape = tuple(sorted((d, frozenset(masks), _kept_edges(pairs)) for d, (pairs, masks) in by_dir.items()))
    key = (shape, servers)
    if cache is not None and key in cache:
        if quick is not None:
            cache[(quick, servers)] = cache[key]
        return {d: list(w) for d, w in cache[key].items()}
    ways = {d: _topo(edges, masks) for d, masks, edges in shape}
    req, resp = ways.get("request"), ways.get("response")
    if req is not None and resp is not None:
        ways["request"] = insert_missing(req, list(reversed(resp)))
        ways["response"] = insert_missing(resp, list(reversed(req)))
    hint = _best_hint(c, f, ways.get("request", ()))
    if f.proto == PROTO_ARP:
        pass  # (ARP stays on its link: its way is where it was seen, not the request's)
    elif hint and "request" in ways:
        if set(ways["request"]) & set(hint):
            ways["request"] = insert_missing(ways["request"], hint)
            if "response" in ways:
                ways["response"] = insert_missing(ways["response"], list(reversed(hint)))
    elif "request" in ways:
        ways["request"] = _extend_by_role(c, ways["request"], f)
    if cache is not None:
        cache[key] = {d: tuple(w) for d, w in ways.items()}
        if quick is not None:
            cache[(quick, servers)] = cache[key]
    return ways


def _best_hint(c: Correlation, f: FlowState, seen: Sequence[int]) -> list[int]:
    """The expected way (of path.json's: the request's, a Service's other endpoints', the DNS
    query's) of a flow: the one to an address of the flow's (its DNAT's endpoint, the DNS pod);
    else the one its points fit best (the most of them on it), the request's before a shorter
    one (a packet that stopped early passed only the points the ways share)."""
    opts = c.options
    hints = [[c.point_index[p] for p in w if p in c.point_index] for w in (opts.way_hint, *opts.other_ways)]
    if len(hints) == 1:
        return hints[0]
    if opts.way_ends:
        ips = {ck[1][0] for ck in f.cks} | {ck[2][0] for ck in f.cks}
        to = [h for h, ip in zip(hints, opts.way_ends) if ip and _packed(ip) in ips]
        if len(to) == 1:
            return to[0]
    got = set(seen)
    return max(hints, key=lambda h: (len(got & set(h)), h is hints[0], -len(set(h) - got)))


@functools.lru_cache(maxsize=64)
def _packed(ip: str) -> bytes:
    """An address as the flows' keys hold it (packed), worked out once per address."""
    return ipaddress.ip_address(ip).packed


_QUICK = object()


def _quick_key(f: FlowState, client: tuple) -> tuple | None:
    """What decides a flow's ways, read off its shape tallies without counting: the kinds of
    packets each direction had. None when the counts matter (two points passed in both orders
    by one direction: the majority decides) or when the flow has no tallies to read."""
    if not f.tallies:
        return None
    req: set = set()
    resp: set = set()
    for sender, tallies in f.tallies.items():
        (req if sender == client else resp).update(tallies)
    out = []
    for d, kinds in (("request", req), ("response", resp)):
        if not kinds:
            continue
        segs = {seg for _mask, ss in kinds for seg in ss}
        if any((b, a) in segs for a, b in segs):
            return None
        out.append((d, frozenset(kinds)))
    return tuple(out)


def _kept_edges(pairs: Counter) -> frozenset[tuple[int, int]]:
    """The majority direction of every pair of points (a tie: from the lower index)."""
    return frozenset((a, b) for (a, b), n in pairs.items()
                     if a != b and not (n < pairs.get((b, a), 0) or (n == pairs.get((b, a), 0) and a > b)))


def _topo(kept: frozenset[tuple[int, int]], masks: Iterable[int]) -> list[int]:
    nodes = set()
    for m in masks:
        i = 0
        while m:
            if m & 1:
                nodes.add(i)
            m >>= 1
            i += 1
    edges: dict[int, set[int]] = {n: set() for n in nodes}
    indeg = Counter({n: 0 for n in nodes})
    for a, b in kept:
        if b not in edges[a]:
            edges[a].add(b)
            indeg[b] += 1
    out = []
    ready = sorted(n for n in nodes if indeg[n] == 0)
    while ready:
        n = ready.pop(0)
        out.append(n)
        for m in sorted(edges[n]):
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
        ready.sort()
    out.extend(sorted(n for n in nodes if n not in out))  # cycles: keep the rest in index order
    return out


def insert_missing(base: list[int], other: Sequence[int]) -> list[int]:
    """Insert the points of `other` missing from `base`, each after its predecessor in `other`."""
    out = list(base)
    for k, p in enumerate(other):
        if p in out:
            continue
        pos = 0
        for q in reversed(other[:k]):
            if q in out:
                pos = out.index(q) + 1
                break
        out.insert(pos, p)
    return out


def _extend_by_role(c: Correlation, way: list[int], f: FlowState) -> list[int]:
    """Points of the last node the flow reached that it never reached there but lie further in
    (underlay -> tunnel -> bridge -> pod veth), when it came into that node from the wire. A
    dropped VXLAN packet shows as lost after the NIC. (One that came out of a pod there was on
    its way out, wherever it went: its way on is for path.json to say.)"""
    if not way:
        return way
    pts = c.points
    last = pts[way[-1]]
    first_here = next(pts[i] for i in way if pts[i].node == last.node)
    if first_here.role in ("pod-veth", "bridge"):
        return way
    server_ips = {ck[1][0] for ck in f.cks} | {ck[2][0] for ck in f.cks}
    rank = INGRESS_RANK.get(last.role, 4)
    extra = []
    for i, p in enumerate(pts):
        if i in way or p.node != last.node:
            continue
        r = INGRESS_RANK.get(p.role, 4)
        if r <= rank or r == 4:
            continue
        if p.role == "pod-veth" and p.ips and not (p.ips & server_ips):
            continue  # another pod's veth
        extra.append((r, i))
    return way + [i for _, i in sorted(extra)]


def point_order(c: Correlation, ways: list[tuple[str, ...]]) -> list[int]:
    """Points in the order of the busiest request way, then the rest by name."""
    order: list[int] = []
    if ways:
        best = max(ways, key=len)
        order = [c.point_index[p] for p in best]
    for i in sorted(range(len(c.points)), key=lambda i: c.points[i].id):
        if i not in order:
            order.append(i)
    return order
