"""From a Correlation to the model: flows with their client, server and NAT, packets and their
hops, points, segments and the warnings. What changed at a hop is tracer.correlate.changes's."""

from __future__ import annotations

from dataclasses import replace

from tracer.correlate.flows import FlowState
from tracer.correlate.changes import (
    ICMP_UNREACHABLE, PROTO_NAMES, arp_fields, dns_message, dns_of, drop_hint, encapsulation, endpoint, frame_ends, hop_changes,
    hop_why, icmp_quote, next_hop_mtu, packet_label, packet_summary,
)
from tracer.correlate.order import PacketSighting
from tracer.correlate.result import Correlation
from tracer.correlate.ways import flow_ways, point_order, visible_way
from tracer.correlate.ways import mask_info as mask_on_way
from tracer.decode import PROTO_ICMP, PROTO_TCP, fmt_ip, fmt_mac, tcp_flags_str
from tracer.model import (
    CapturePoint, Carriage, Flow, FlowSummary, Hop, Nat, PacketTrace, SegmentStats, Trace, duration,
)

def build_trace(c: Correlation) -> Trace:
    """The model of what correlation found: flows, their packets and hops, points, segments."""
    pts = c.points
    flows_out = []
    all_ways: list[tuple[str, ...]] = []
    seg_totals: dict[tuple[int, int], list[int]] = {}  # [packets, lost, not captured, bytes, bytes lost]
    flows = c.flows
    ways_cache: dict = {}
    named: dict[tuple, tuple[str, ...]] = {}   # a way by point indices -> by point ids
    masks_seen: dict[tuple, tuple] = {}        # (mask, way) -> what packets with that mask add up to
    late: dict[tuple, int] = {}                # (node, after its end) -> packets that stopped before it uncaptured
    blind = frozenset(c.point_index[p] for p in c.options.blind_points if p in c.point_index)

    def mask_on_way_seen(mask: int, way: tuple[int, ...]) -> tuple:
        info = masks_seen.get((mask, way))
        if info is None:
            info = masks_seen[(mask, way)] = mask_on_way(pts, mask, way, blind)
        return info

    for f in flows:
        client = _client(f)
        ways = flow_ways(c, f, client, ways_cache)
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
        if c.options.keep_packets:
            packets = _retransmissions(
                [_packet(c, rec, client, ways, u, blind) for rec, u in zip(f.records, f.uncovered, strict=True)],
                f.records)
        gaps = invisible = 0
        per_point: dict[str, int] = {}
        stopped: dict[str, int] = {}
        reached = 0
        for sender, masks in f.masks.items():
            way = tuple_ways.get("request" if sender == client else "response", ())
            for mask, n in masks.items():
                ids, got_there, stopped_at, _, segs, gap, unseen = mask_on_way_seen(mask, way)
                if gap:
                    gaps += n
                if unseen:
                    invisible += n
                for pid in ids:
                    per_point[pid] = per_point.get(pid, 0) + n
                if got_there:
                    reached += n
                elif stopped_at is not None:
                    stopped[stopped_at] = stopped.get(stopped_at, 0) + n
                for seg, lost, uncaptured in segs:
                    tot = seg_totals.setdefault(seg, [0, 0, 0, 0, 0])  # (per kind of packet, not per packet)
                    tot[0] += n
                    if lost:
                        tot[1] += n
                    elif uncaptured:
                        tot[2] += n
        not_captured = 0
        for sender, unsure in f.unsure.items():
            way = tuple_ways.get("request" if sender == client else "response", ())
            for (mask, before, after), n in unsure.items():
                nxt = mask_on_way_seen(mask, way)[3]
                if nxt is not None and (before | after) >> nxt & 1:
                    not_captured += n
                    key = (pts[nxt].node, bool(after >> nxt & 1))
                    late[key] = late.get(key, 0) + n
        total_bytes = bytes_reached = 0
        bytes_per_point: dict[str, int] = {}
        for sender, masks in f.byte_masks.items():
            way = tuple_ways.get("request" if sender == client else "response", ())
            for mask, n in masks.items():
                ids, got_there, _, _, segs, _, _ = mask_on_way_seen(mask, way)
                total_bytes += n
                for pid in ids:
                    bytes_per_point[pid] = bytes_per_point.get(pid, 0) + n
                if got_there:
                    bytes_reached += n
                for seg, lost, _ in segs:
                    tot = seg_totals.setdefault(seg, [0, 0, 0, 0, 0])
                    tot[3] += n
                    if lost:
                        tot[4] += n
        summary = FlowSummary(packets=f.packets, reached_end=reached, per_point=per_point, way=way_ids,
                              stopped=stopped, not_captured=not_captured, gaps=gaps, not_visible=invisible,
                              bytes=total_bytes, bytes_per_point=bytes_per_point, bytes_reached_end=bytes_reached)
        flows_out.append(Flow(client=endpoint(client), server=server, protocol=PROTO_NAMES.get(f.proto, str(f.proto)),
                              nat=nat, packets=packets, summary=summary, http=f.http))
    flows_out = _answered_by_icmp(c, flows, _named_by_dns(c, flows_out))
    order = point_order(c, all_ways)
    points = tuple(
        CapturePoint(id=pts[i].id, node=pts[i].node, interface=pts[i].interface, role=pts[i].role,
                     packets=pts[i].frames, undecoded=pts[i].undecoded, files=tuple(pts[i].files))
        for i in order
    )
    segments = []
    for (a, b), (n, lost, uncaptured, seg_bytes, bytes_lost) in seg_totals.items():
        shift = c.offsets.get(pts[a].node, 0.0) - c.offsets.get(pts[b].node, 0.0)
        median, p99 = c.segment_latency((a, b), (0.5, 0.99)) or (None, None)
        segments.append(SegmentStats(
            src=pts[a].id, dst=pts[b].id, packets=n, lost=lost, not_captured=uncaptured, bytes=seg_bytes,
            bytes_lost=bytes_lost,
            latency_median=None if median is None else median + shift,
            latency_p99=None if p99 is None else p99 + shift))
    rank = {i: k for k, i in enumerate(order)}
    segments.sort(key=lambda s: (rank[c.point_index[s.src]], rank[c.point_index[s.dst]]))
    ref = min(c.offsets, key=c.node_rank) if c.offsets else (pts[order[0]].node if order else None)
    return Trace(
        points=points,
        clock_offsets={n: round(o, 6) for n, o in sorted(c.offsets.items(), key=lambda kv: c.node_rank(kv[0])) if n != ref},
        flows=tuple(flows_out), reference_node=ref, segments=tuple(segments),
        warnings=(*c.warnings, *_late_warnings(c, late)),
        total_packets=c.total_frames, matched_packets=c.packets,
    )


def _named_by_dns(c: Correlation, flows: list[Flow]) -> list[Flow]:
    """Link each connection to the DNS answer that named its address: the last A or AAAA answer
    for that address before the connection's first packet (the client's resolver gave it)."""
    answers: list[tuple[float, str, str]] = []  # (time, address, name)
    for f in flows:
        for p in f.packets:
            if p.dns is not None and p.dns.response and p.hops:
                answers += [(_when(c, p), a.split(" ", 1)[1], p.dns.name) for a in p.dns.answers
                            if a.split(" ", 1)[0] in ("A", "AAAA")]
    if not answers:
        return flows
    answers.sort()
    out = []
    for f in flows:
        if f.packets and f.protocol in ("tcp", "udp") and f.packets[0].dns is None:
            asked = (f.nat.original if f.nat is not None and f.nat.kind == "dnat" else f.server).rsplit(":", 1)[0]
            asked = asked.removeprefix("[").removesuffix("]")  # (an IPv6 endpoint is `[addr]:port`)
            start = _when(c, f.packets[0])
            name = next((n for t, ip, n in reversed(answers) if ip == asked and t <= start), "")
            if name:
                f = replace(f, dns_name=name)
        out.append(f)
    return out


def _answered_by_icmp(c: Correlation, flows: list[FlowState], out: list[Flow]) -> list[Flow]:
    """A TCP packet that stopped where a node answered it with an ICMP error (its quote names
    the packet: addresses, ports, sequence number, as the node had it): its hint says so, e.g.
    a "fragmentation needed" for a packet larger than the way takes on (path-MTU discovery)."""
    quotes: dict[tuple, tuple] = {}
    for f in flows:
        if f.proto == PROTO_ICMP:
            for seq in f.records:
                q = icmp_quote(seq[0].frame)
                if q is not None:
                    quotes.setdefault(q, (seq[0].frame, c.points[seq[0].point].node))
    if not quotes:
        return out
    result = []
    for f, flow in zip(flows, out, strict=True):
        if f.proto == PROTO_TCP and any(p.stopped for p in flow.packets):
            packets = []
            for p, seq in zip(flow.packets, f.records, strict=True):
                last = seq[-1].frame
                hit = quotes.get((last.ip_src, last.ip_dst, last.sport, last.dport, last.tcp_seq)) if p.stopped else None
                if hit is not None:
                    icmp, node = hit
                    mtu = next_hop_mtu(icmp)
                    words = ICMP_UNREACHABLE.get(icmp.icmp_code, "an ICMP error") if icmp.icmp_type == 3 else "time exceeded"
                    hint = f"{node} answered it with ICMP {words}" + (
                        f" (next-hop MTU {mtu}): larger than the way takes on; TCP sends its bytes again in smaller "
                        "packets (path-MTU discovery)" if mtu else "")
                    p = replace(p, hint=hint)
                packets.append(p)
            flow = replace(flow, packets=tuple(packets))
        result.append(flow)
    return result


def _when(c: Correlation, p: PacketTrace) -> float:
    """When a packet was at its first point, on the reference clock."""
    h = p.hops[0]
    return h.time - c.offsets.get(h.point.split("/", 1)[0], 0.0)


def _late_warnings(c: Correlation, late: dict[tuple, int]) -> list[str]:
    """Say which nodes' captures began later or ended sooner than the others', where packets
    stopped before them then: what looks like loss there may be a capture not yet running."""
    if not late:
        return []
    _, _, nodes = c.window
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

def _client(f: FlowState) -> tuple:
    if f.syn_sender is not None:
        return f.syn_sender
    senders = list(f.endpoints_seen)
    if len(senders) >= 2:
        # The server is the endpoint with the lower (well-known) port.
        a, b = senders[0], senders[1]
        pa, pb = a[1] or 0, b[1] or 0
        return a if pa >= pb else b  # a tie (ICMP, equal ports): the first sender
    return f.first_sender


def _server(f: FlowState, client: tuple, nat: Nat | None) -> str:
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


def _nat(c: Correlation, f: FlowState, client: tuple, ways: dict[str, list[int]]) -> Nat | None:
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
            k = way.index(p) if p in way else len(way)
            previous = c.points[way[k - 1]].id if 0 < k < len(way) else None
            return Nat(original=endpoint(before), translated=endpoint(after), kind=kind, point=c.points[p].id,
                       previous_point=previous)
    return None


# ---- packets and hops ----

def _packet(c: Correlation, seq: list[PacketSighting], client: tuple, ways: dict[str, list[int]],
            uncovered: int = 0, blind: frozenset[int] = frozenset()) -> PacketTrace:
    first = seq[0].frame
    direction = "request" if frame_ends(first)[0] == client else "response"
    hops = _hops(c, seq, direction)
    seen = {s.point for s in seq}
    way, invisible = tuple(ways.get(direction, ())), ()
    if blind:
        way, invisible = visible_way(way, sum(1 << p for p in seen), blind)
    pos = {p: k for k, p in enumerate(way)}
    start = pos.get(seq[0].point, 0)
    unseen = [p for p in way[start:] if p not in seen]
    missing = tuple(c.points[p].id for p in unseen)
    last = max((pos[p] for p in seen if p in pos), default=-1)
    gaps = tuple(c.points[p].id for p in unseen if pos[p] < last)
    after = [p for p in unseen if pos[p] > last]
    hint = ""
    if after and not uncovered >> after[0] & 1 and seq[-1].point in way:
        hint = drop_hint(c.points[way[last]], c.points[after[0]])
    not_captured = tuple(c.points[p].id for p in unseen if uncovered >> p & 1)
    flags = tcp_flags_str(first.tcp_flags) if first.proto == PROTO_TCP else None
    msg = dns_message(first)  # (read once: the summary, the label and the DNS fields take it)
    return PacketTrace(direction=direction, tcp_flags=flags, ip_id=first.ip_id or 0,
                       payload_bytes=first.payload_len or 0, tcp_seq=first.tcp_seq, hops=hops,
                       last_seen=c.points[seq[-1].point].id,
                       missing=missing, not_captured=not_captured, gaps=gaps, hint=hint, summary=packet_summary(first, msg),
                       label=packet_label(first, msg), not_visible=tuple(c.points[p].id for p in invisible),
                       dns=dns_of(msg))


def _retransmissions(packets: list[PacketTrace], records: list[list[PacketSighting]]) -> tuple[PacketTrace, ...]:
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


def _hops(c: Correlation, seq: list[PacketSighting], direction: str) -> tuple[Hop, ...]:
    pts = c.points
    t0 = None
    hops: list[Hop] = []
    prev = None
    prev_point = None
    prev_frames = 1
    fragmented = False  # (the hop before: the packet in IP fragments)
    for s in seq:
        fr = s.frame
        p = pts[s.point]
        corrected = s.time - c.offsets.get(p.node, 0.0)
        if t0 is None:
            t0 = corrected
        enc = encapsulation(fr)
        changes = () if prev is None else hop_changes(prev, fr)
        why = hop_why(changes, prev, prev_point, fr, p, enc, direction)
        (src, _), (dst, _) = frame_ends(fr)
        hops.append(Hop(point=p.id, time=s.time, offset=round(corrected - t0, 9), direction=s.direction,
                        eth_src=fmt_mac(fr.eth_src), eth_dst=fmt_mac(fr.eth_dst), ip_src=fmt_ip(src),
                        ip_dst=fmt_ip(dst), sport=fr.sport, dport=fr.dport, ttl=fr.ttl, encap=enc,
                        changes=tuple(changes), why=why, frame_bytes=fr.orig_len,
                        ip_id=fr.ip_id if fr.ip_version == 4 else None, arp=arp_fields(fr),
                        carried=_fragments(fr, fragmented) if fr.fragments or fragmented else
                        _carriage(s.carried, prev_frames, fr, c.options.offloads.get(p.id, {}))))
        prev, prev_point = fr, p
        prev_frames = len(fr.fragments) if fr.fragments else s.carried[0] if s.carried else 1
        fragmented = bool(fr.fragments)
    return tuple(hops)


def _fragments(fr, before: bool) -> Carriage | None:
    """A hop whose packet came in IPv4 fragments (put together: tracer.capture.defrag), or the
    first after such hops (None: whole, as before)."""
    if fr.fragments:
        n = len(fr.fragments)
        return Carriage(frames=n, frame_bytes=tuple(fr.fragments), bytes=fr.payload_len or 0, how="fragmented", by="IP",
                        note=f"fragmented into {n} frames (IP: larger than the MTU here, DF not set)")
    if before:
        return Carriage(frames=1, frame_bytes=(fr.orig_len,), bytes=fr.payload_len or 0, how="reassembled", by="IP",
                        note="reassembled from its fragments (IP)")
    return None


SEGMENTING = ("tx-tcp-segmentation", "tx-generic-segmentation", "tx-udp_tnl-segmentation")
MERGING = ("rx-gro", "rx-gro-hw", "rx-lro")
"""The offloads (`ethtool -k`'s names) a hop's note names where frames were cut, or merged."""


def _carriage(carried: tuple | None, before: int, fr, offloads: dict[str, str]) -> Carriage | None:
    """How the packet's bytes were carried at a hop (pieces.Assembled.carried there), against
    the hop before (`before` frames): None where one frame carried them, as at the hop before.
    `offloads`: the point's, as its capture agent read them (named in the note)."""
    if carried is None:
        if before == 1:
            return None
        carried = (1, (fr.orig_len,), fr.payload_len or 0, False)
    frames, sizes, got, beyond = carried
    n = f"{frames} frame{'s' if frames != 1 else ''}"
    if frames > before and not beyond:
        how, by, note = "segmented", "TSO/GSO", f"segmented into {n} (TSO/GSO)"
    elif frames < before or beyond:
        how, by = "merged", "GRO"
        note = f"merged into {n} (GRO)" + (", with the bytes of the packets beside it" if beyond else "")
    else:  # (as many frames as before, cut elsewhere: one frame inside the packet's bytes never reaches here)
        how, by, note = "recut", "TSO/GSO, GRO", f"cut otherwise, into {n} (TSO/GSO, GRO)"
    named = [f"{k} {offloads[k]}" for k in (SEGMENTING if how == "segmented" else MERGING) if k in offloads]
    if named:
        note += f" ({', '.join(named)} here)"
    return Carriage(frames=frames, frame_bytes=tuple(sizes), bytes=got, how=how, by=by, note=note)


