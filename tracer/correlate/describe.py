"""From the correlator's state to the model: ways, hops and what changed at each, NAT, summaries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

from tracer.correlate.engine import HTTP_STARTS, CaptureInput, Correlator, Options, Sighting, _Flow
from tracer.decode import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, fmt_ip, fmt_mac, tcp_flags_str
from tracer.model import (
    CapturePoint, Encapsulation, Flow, FlowSummary, Hop, Nat, PacketTrace, SegmentStats, Trace, duration,
)
from tracer.capture.roles import INGRESS_RANK

PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmpv6", 47: "gre", 4: "ipip"}
FLAG_WORDS = {"S": "SYN", "SA": "SYN-ACK", "A": "ACK", "PA": "PSH-ACK", "FA": "FIN-ACK", "R": "RST", "RA": "RST-ACK",
              "FPA": "FIN-PSH-ACK"}
TUNNEL_NAMES = {"vxlan": "VXLAN", "geneve": "Geneve", "ipip": "IP-in-IP", "gre": "GRE", "erspan": "ERSPAN"}


def analyze(inputs: Iterable[CaptureInput], options: Options | None = None) -> Trace:
    """Read, correlate and describe a set of captures."""
    return build_trace(Correlator(inputs, options).run())


def endpoint(ep: tuple) -> str:
    ip, port = ep
    s = fmt_ip(ip) or "?"
    if port is None:
        return s
    return f"[{s}]:{port}" if ":" in s else f"{s}:{port}"


def build_trace(c: Correlator) -> Trace:
    pts = c.points
    flows_out = []
    all_ways: list[tuple[str, ...]] = []
    seg_totals: dict[tuple[int, int], list[int]] = {}
    flows = c.flows()
    ways_cache: dict = {}
    named: dict[tuple, tuple[str, ...]] = {}   # a way by point indices -> by point ids
    masks_seen: dict[tuple, tuple] = {}        # (mask, way) -> what packets with that mask add up to
    late: dict[tuple, int] = {}                # (node, after its end) -> packets that stopped before it uncaptured

    def mask_info(mask: int, way: tuple[int, ...]) -> tuple:
        info = masks_seen.get((mask, way))
        if info is None:
            info = masks_seen[(mask, way)] = _mask_info(pts, mask, way)
        return info

    for f in flows:
        client = _client(f)
        ways = _ways(c, f, client, ways_cache)
        way_ids, tuple_ways = {}, {}
        for d, w in ways.items():
            w = tuple_ways[d] = tuple(w)
            ids = named.get(w)
            if ids is None:
                ids = named[w] = tuple(pts[i].id for i in w)
            way_ids[d] = ids
            all_ways.append(ids)
        nat = _nat(c, f, client, ways)
        server = _server(f, client, nat)
        packets = ()
        if c.opts.keep_packets:
            packets = _retransmissions(
                [_packet(c, rec, client, ways, u) for rec, u in zip(f.records, f.uncovered, strict=True)], f.records)
        per_point: dict[str, int] = {}
        stopped: dict[str, int] = {}
        reached = 0
        for sender, masks in f.masks.items():
            way = tuple_ways.get("request" if sender == client else "response", ())
            for mask, n in masks.items():
                ids, got_there, stopped_at, _, segs = mask_info(mask, way)
                for pid in ids:
                    per_point[pid] = per_point.get(pid, 0) + n
                if got_there:
                    reached += n
                elif stopped_at is not None:
                    stopped[stopped_at] = stopped.get(stopped_at, 0) + n
                for seg, lost in segs:
                    tot = seg_totals.get(seg)
                    if tot is None:
                        tot = seg_totals[seg] = [0, 0]
                    tot[0] += n
                    if lost:
                        tot[1] += n
        not_captured = 0
        for sender, unsure in f.unsure.items():
            way = tuple_ways.get("request" if sender == client else "response", ())
            for (mask, before, after), n in unsure.items():
                nxt = mask_info(mask, way)[3]
                if nxt is not None and (before | after) >> nxt & 1:
                    not_captured += n
                    key = (pts[nxt].node, bool(after >> nxt & 1))
                    late[key] = late.get(key, 0) + n
        summary = FlowSummary(packets=f.packets, reached_end=reached, per_point=per_point, way=way_ids,
                              stopped=stopped, not_captured=not_captured)
        flows_out.append(Flow(client=endpoint(client), server=server, protocol=PROTO_NAMES.get(f.proto, str(f.proto)),
                              nat=nat, packets=packets, summary=summary, http=f.http))
    order = _point_order(c, all_ways)
    points = tuple(
        CapturePoint(id=pts[i].id, node=pts[i].node, interface=pts[i].interface, role=pts[i].role,
                     packets=pts[i].frames, undecoded=pts[i].undecoded, files=tuple(pts[i].files))
        for i in order
    )
    segments = []
    for (a, b), (n, lost) in seg_totals.items():
        shift = c.offsets.get(pts[a].node, 0.0) - c.offsets.get(pts[b].node, 0.0)
        median, p99 = c.latency((a, b), (0.5, 0.99)) or (None, None)
        segments.append(SegmentStats(
            src=pts[a].id, dst=pts[b].id, packets=n, lost=lost,
            latency_median=None if median is None else median + shift,
            latency_p99=None if p99 is None else p99 + shift))
    rank = {i: k for k, i in enumerate(order)}
    segments.sort(key=lambda s: (rank[c.point_index[s.src]], rank[c.point_index[s.dst]]))
    ref = min(c.offsets, key=c._node_rank) if c.offsets else (pts[order[0]].node if order else None)
    return Trace(
        points=points,
        clock_offsets={n: round(o, 6) for n, o in sorted(c.offsets.items(), key=lambda kv: c._node_rank(kv[0])) if n != ref},
        flows=tuple(flows_out), reference_node=ref, segments=tuple(segments),
        warnings=(*c.warnings, *_late_warnings(c, late)),
        total_packets=c.total_frames, matched_packets=c.distinct,
    )


def _mask_info(pts, mask: int, way: tuple[int, ...]) -> tuple:
    """What the packets that passed the points in `mask` add up to, on `way`: the points' ids,
    whether they reached its end, where they stopped if not and the point of the way they did
    not reach (its index), and each step of the way they entered with whether they were lost on it."""
    ids = tuple(pts[i].id for i in range(len(pts)) if mask >> i & 1)
    got_there = bool(way) and bool(mask >> way[-1] & 1)
    stopped_at = next_point = None
    if way and not got_there:
        seen = [k for k, p in enumerate(way) if mask >> p & 1]
        if seen:
            stopped_at, next_point = pts[way[seen[-1]]].id, way[seen[-1] + 1]
    segs = tuple(((a, b), not mask >> b & 1) for a, b in zip(way, way[1:]) if mask >> a & 1)
    return ids, got_there, stopped_at, next_point, segs


def _late_warnings(c: Correlator, late: dict[tuple, int]) -> list[str]:
    """Say which nodes' captures began later or ended sooner than the others', where packets
    stopped before them then: what looks like loss there may be a capture not yet running."""
    if not late:
        return []
    _, _, nodes = c._capture_window()
    first = min(lo for lo, _ in nodes.values())
    last = max(hi for _, hi in nodes.values())
    out = []
    for (node, after), n in sorted(late.items()):
        lo, hi = nodes[node]
        when = f"end {duration(last - hi)} before the last" if after else f"begin {duration(lo - first)} after the first"
        out.append(f"{n} packet{'s' if n != 1 else ''} stopped before {node} while it captured nothing (its "
                   f"captures {when}): lost there, or gone by before its capture ran; capture on every node "
                   f"over the same span to tell")
    return out


# ---- flows ----

def _client(f: _Flow) -> tuple:
    if f.syn_sender is not None:
        return f.syn_sender
    senders = list(f.endpoints_seen)
    if len(senders) >= 2:
        # The server is the endpoint with the lower (well-known) port.
        a, b = senders[0], senders[1]
        pa, pb = a[1] or 0, b[1] or 0
        return a if pa >= pb else b  # a tie (ICMP, equal ports): the first sender
    return f.first_sender


def _server(f: _Flow, client: tuple, nat: Nat | None) -> str:
    """Where the request went: what its DNAT made of its destination, else the other end."""
    if nat is not None and nat.kind == "dnat":
        return nat.translated
    for proto, a, b in f.cks:
        if a == client:
            return endpoint(b)
        if b == client:
            return endpoint(a)
    proto, a, b = next(iter(f.cks))
    return endpoint(b)


def _nat(c: Correlator, f: _Flow, client: tuple, ways: dict[str, list[int]]) -> Nat | None:
    """The request's own translation: DNAT of its destination, or SNAT of its (the client's) source,
    where it shows first on the request's way (packets that missed a point show it later)."""
    if not f.nat:
        return None
    way = ways.get("request", [])
    def place(entry: tuple) -> int:
        return way.index(entry[3]) if entry[3] in way else len(way)
    # (a reply's destination put back to the client, where the request's source was SNAT-ed, is no DNAT)
    for kind, test in (("dnat", lambda n: n[1] != client and n[2] != client), ("snat", lambda n: n[1] == client)):
        found = [n for n in f.nat if n[0] == kind and test(n)]
        if found:
            _, before, after, p = min(found, key=place)  # (min keeps the first of equals)
            return Nat(original=endpoint(before), translated=endpoint(after), kind=kind, point=c.points[p].id)
    return None


def _ways(c: Correlator, f: _Flow, client: tuple, cache: dict | None = None) -> dict[str, list[int]]:
    """The ordered points of each direction: from the data, mirrored, completed by the path hint and roles.

    What decides them (the points each direction passed, the majority order of each pair of
    points, the server's addresses) is the same for most flows of a capture: `cache` keeps the
    answer per such key.
    """
    servers = frozenset(ck[1][0] for ck in f.cks) | frozenset(ck[2][0] for ck in f.cks)
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
        ways["request"] = _merge(req, list(reversed(resp)))
        ways["response"] = _merge(resp, list(reversed(req)))
    hint = [c.point_index[p] for p in c.opts.way_hint if p in c.point_index]
    if hint and "request" in ways:
        if set(ways["request"]) & set(hint):
            ways["request"] = _merge(ways["request"], hint)
            if "response" in ways:
                ways["response"] = _merge(ways["response"], list(reversed(hint)))
    elif "request" in ways:
        ways["request"] = _extend_by_role(c, ways["request"], f)
    if cache is not None:
        cache[key] = {d: tuple(w) for d, w in ways.items()}
        if quick is not None:
            cache[(quick, servers)] = cache[key]
    return ways


_QUICK = object()


def _quick_key(f: _Flow, client: tuple) -> tuple | None:
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


def _merge(base: list[int], other: Sequence[int]) -> list[int]:
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


def _extend_by_role(c: Correlator, way: list[int], f: _Flow) -> list[int]:
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


def _point_order(c: Correlator, ways: list[tuple[str, ...]]) -> list[int]:
    """Points in the order of the busiest request way, then the rest by name."""
    order: list[int] = []
    if ways:
        best = max(ways, key=len)
        order = [c.point_index[p] for p in best]
    for i in sorted(range(len(c.points)), key=lambda i: c.points[i].id):
        if i not in order:
            order.append(i)
    return order


# ---- packets and hops ----

def _packet(c: Correlator, seq: list[Sighting], client: tuple, ways: dict[str, list[int]],
            uncovered: int = 0) -> PacketTrace:
    first = seq[0].frame
    direction = "request" if (first.ip_src, first.sport) == client else "response"
    hops = _hops(c, seq, direction)
    way = ways.get(direction, [])
    seen = {s.point for s in seq}
    start = way.index(seq[0].point) if seq[0].point in way else 0
    unseen = [p for p in way[start:] if p not in seen]
    missing = tuple(c.points[p].id for p in unseen)
    not_captured = tuple(c.points[p].id for p in unseen if uncovered >> p & 1)
    flags = tcp_flags_str(first.tcp_flags) if first.proto == PROTO_TCP else None
    return PacketTrace(direction=direction, tcp_flags=flags, ip_id=first.ip_id or 0,
                       payload_bytes=first.payload_len or 0, hops=hops, last_seen=c.points[seq[-1].point].id,
                       missing=missing, not_captured=not_captured, summary=describe(first))


def _retransmissions(packets: list[PacketTrace], records: list[list[Sighting]]) -> tuple[PacketTrace, ...]:
    """Mark each TCP segment sent again, as Wireshark's TCP analysis does: data, SYN or FIN that
    begins before the end of what its direction already sent. Not: a keep-alive (one byte or
    none, just before that end), the same IP packet seen twice (same IP ID and sequence number),
    a reset. Packets come in the order they set out."""
    nxt: dict[str, int] = {}  # direction -> end of what it sent, as sequence number
    seen: set[tuple] = set()
    out = []
    for p, rec in zip(packets, records, strict=True):
        fr = rec[0].frame
        flags = fr.tcp_flags or 0
        if fr.proto == PROTO_TCP and fr.tcp_seq is not None and not flags & 0x04:  # (RST)
            seq, n = fr.tcp_seq, fr.payload_len or 0
            end = (seq + n + bool(flags & 0x02) + bool(flags & 0x01)) & 0xFFFFFFFF  # (SYN and FIN count one)
            if end != seq:  # (carries something: data, SYN or FIN)
                last = nxt.get(p.direction)
                again = (p.direction, seq, fr.ip_id) in seen
                before = last is not None and (last - seq) & 0xFFFFFFFF < 0x80000000 and last != seq
                keepalive = n == 1 and not flags & 0x03 and last is not None and (last - seq) & 0xFFFFFFFF == 1
                if before and not again and not keepalive:
                    p = replace(p, retransmission=True)
                seen.add((p.direction, seq, fr.ip_id))
                if last is None or (end - last) & 0xFFFFFFFF < 0x80000000:
                    nxt[p.direction] = end
        out.append(p)
    return tuple(out)


def describe(fr) -> str:
    """`SYN 10.1.38.203:56312 -> 10.1.201.77:80`, `GET /get`, `ICMP echo 7`: one packet in words."""
    src, dst = endpoint((fr.ip_src, fr.sport)), endpoint((fr.ip_dst, fr.dport))
    if fr.proto == PROTO_TCP:
        flags = tcp_flags_str(fr.tcp_flags)
        text = f"{FLAG_WORDS.get(flags, flags)} {src} -> {dst}"
        if fr.payload_len:
            line = fr.data[fr.payload_offset:fr.payload_offset + 64].split(b"\r\n", 1)[0] if fr.payload_offset >= 0 else b""
            if line.startswith(HTTP_STARTS):
                text += " " + line.decode("ascii", "replace")
            else:
                text += f" {fr.payload_len} bytes"
        return text
    if fr.proto in (PROTO_ICMP, PROTO_ICMPV6):
        kind = {0: "echo reply", 8: "echo request", 128: "echo request", 129: "echo reply"}.get(fr.icmp_type, f"type {fr.icmp_type}")
        seq = f" seq {fr.icmp_seq}" if fr.icmp_seq is not None else ""
        return f"ICMP {kind}{seq} {src} -> {dst}"
    name = PROTO_NAMES.get(fr.proto, f"proto {fr.proto}").upper()
    return f"{name} {src} -> {dst} {fr.payload_len or 0} bytes"


def _encap(fr) -> Encapsulation | None:
    if not fr.tunnels:
        return None
    t = fr.tunnels[-1]  # the tunnel right around the inner packet
    return Encapsulation(type=t.type, vni=t.vni, outer_eth_src=fmt_mac(t.outer_eth_src),
                         outer_eth_dst=fmt_mac(t.outer_eth_dst), outer_ip_src=fmt_ip(t.outer_ip_src),
                         outer_ip_dst=fmt_ip(t.outer_ip_dst), udp_sport=t.udp_sport, udp_dport=t.udp_dport,
                         bytes_added=sum(x.bytes_added for x in fr.tunnels), outer_ttl=t.outer_ttl)


def _hops(c: Correlator, seq: list[Sighting], direction: str) -> tuple[Hop, ...]:
    pts = c.points
    t0 = None
    hops: list[Hop] = []
    prev = None
    prev_point = None
    for s in seq:
        fr = s.frame
        p = pts[s.point]
        corrected = s.time - c.offsets.get(p.node, 0.0)
        if t0 is None:
            t0 = corrected
        enc = _encap(fr)
        changes, why = _changes(prev, prev_point, fr, p, enc, direction)
        hops.append(Hop(point=p.id, time=s.time, offset=round(corrected - t0, 9), direction=s.direction,
                        eth_src=fmt_mac(fr.eth_src), eth_dst=fmt_mac(fr.eth_dst), ip_src=fmt_ip(fr.ip_src),
                        ip_dst=fmt_ip(fr.ip_dst), sport=fr.sport, dport=fr.dport, ttl=fr.ttl, encap=enc,
                        changes=tuple(changes), why=why))
        prev, prev_point = fr, p
    return tuple(hops)


def _changes(prev, prev_point, fr, point, enc: Encapsulation | None, direction: str) -> tuple[list[str], str]:
    if prev is None:
        if point.role == "pod-veth":
            return [], "as the pod sent it"
        return [], "first seen here"
    changes: list[str] = []
    words: list[str] = []
    if (prev.ip_dst, prev.dport) != (fr.ip_dst, fr.dport):
        changes.append("dnat")
        what = f"destination {endpoint((prev.ip_dst, prev.dport))} -> {endpoint((fr.ip_dst, fr.dport))}"
        words.append(f"DNAT (kube-proxy): {what}" if direction == "request" else f"NAT: {what}")
    if (prev.ip_src, prev.sport) != (fr.ip_src, fr.sport):
        changes.append("snat")
        what = f"source {endpoint((prev.ip_src, prev.sport))} -> {endpoint((fr.ip_src, fr.sport))}"
        words.append(f"SNAT: {what}" if direction == "request" else f"conntrack restores the service address: {what}")
    routed = prev.ttl is not None and fr.ttl is not None and fr.ttl < prev.ttl
    # (Linux cooked captures know only the sender's MAC: what is not known did not change)
    mac = any(a != b and a is not None and b is not None
              for a, b in ((prev.eth_src, fr.eth_src), (prev.eth_dst, fr.eth_dst)))
    if routed:
        changes.append("ttl")
    if mac:
        changes.append("mac")
    if routed or mac:
        parts = []
        if mac:
            parts.append("MACs rewritten")
        if routed:
            parts.append(f"TTL {prev.ttl} -> {fr.ttl}")
        who = f"{point.node} routed it" if routed else f"{point.node} rewrote the frame"
        words.append(f"{who}: " + ", ".join(parts))
    if fr.tunnels and not prev.tunnels:
        changes.append("encap")
        t = fr.tunnels[-1]
        name = TUNNEL_NAMES.get(t.type, t.type)
        vni = f" VNI {t.vni}" if t.vni is not None else ""
        port = f", UDP {t.udp_sport} -> {t.udp_dport}" if t.udp_dport is not None else ""
        words.append(f"{name} encapsulated{vni}{port}, outer {fmt_ip(t.outer_ip_src)} -> {fmt_ip(t.outer_ip_dst)}, "
                     f"+{enc.bytes_added} bytes")
    elif prev.tunnels and not fr.tunnels:
        changes.append("decap")
        t = prev.tunnels[-1]
        words.append(f"{TUNNEL_NAMES.get(t.type, t.type)} decapsulated on {point.node} ({point.interface})")
    elif fr.tunnels and prev.tunnels and prev_point.node != point.node:
        words.append(f"crossed the underlay from {prev_point.node} to {point.node}")
    if not words:
        if prev_point.node != point.node and prev_point.role == point.role == "pod-veth":
            words.append(f"crossed the veth pair from {prev_point.node} to {point.node} unchanged")
        elif prev_point.node != point.node:
            words.append(f"reached {point.node} unchanged")
        else:
            words.append("unchanged")
    return changes, "; ".join(words)
