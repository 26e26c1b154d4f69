"""Correlation by bytes (tracer.correlate.pieces): TCP data that TSO/GSO cut and GRO merged
between points is the same data, not loss.

Crafted captures of a routed way (worker2's pod veth, both eth1, worker1's pod veth) as a real
one shows a response of two super-frames (DATAPATHS.md §9): whole at the sender's veth, cut into
MSS-sized frames at worker2/eth1 (the IP ID one up per frame, PSH on the last only), merged
again by GRO at worker1/eth1 into other sizes, one frame across the two super-frames' border.
tshark reads the same files: its tcp.len per frame adds up to the bytes tracer counts at each
point. A wire frame missing on the receiving side is lost, with the retransmission that carries
its bytes again a packet of its own; in summary mode (the fast path) the same counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factories import CURL, CURL_MAC, HTTPBIN, HTTPBIN_MAC, NIC1_MAC, NIC2_MAC, analyze_json, eth, ipv4, needs_tshark, \
    pcap_bytes, run_cli, tcp, tshark_lines

CALI = "ee:ee:ee:ee:ee:ee"
MSS = 1448
CSEQ, SSEQ = 1000, 50000  # the client's and the server's first sequence number (SYN's)
T0 = 1700000000.0
POINTS = ("worker1/cali1", "worker1/eth1", "worker2/eth1", "worker2/cali2")
UNITS = ((0, 8), (8, 12))
"""The two super-frames the server sends, in MSS-sized segments of its data: [0, 8) and [8, 12)."""
GRO = ((0, 3), (3, 6), (6, 10), (10, 12))
"""How GRO merged the wire's segments at worker1/eth1: the third frame spans both super-frames."""


class Captures:
    """Frames per point, each with its time, written as <node>/<iface>.pcap."""

    def __init__(self):
        self.frames: dict[str, list[tuple[float, bytes]]] = {p: [] for p in POINTS}

    def add(self, point: str, t: float, frame: bytes) -> None:
        self.frames[point].append((t, frame))

    def write(self, run: Path) -> None:
        for point, frames in self.frames.items():
            node, iface = point.split("/")
            (run / node).mkdir(parents=True, exist_ok=True)
            frames.sort(key=lambda f: f[0])
            (run / node / f"{iface}.pcap").write_bytes(
                pcap_bytes([f for _, f in frames], times=[t for t, _ in frames], nanos=True))


def frame_at(point: str, ip: bytes, request: bool) -> bytes:
    """The IP packet in its link's frame at a point of the way (routed: MACs per hop)."""
    if point == "worker1/cali1":
        return eth(CURL_MAC, CALI, 0x0800, ip) if request else eth(CALI, CURL_MAC, 0x0800, ip)
    if point == "worker2/cali2":
        return eth(CALI, HTTPBIN_MAC, 0x0800, ip) if request else eth(HTTPBIN_MAC, CALI, 0x0800, ip)
    return eth(NIC1_MAC, NIC2_MAC, 0x0800, ip) if request else eth(NIC2_MAC, NIC1_MAC, 0x0800, ip)


def whole(c: Captures, t: float, request: bool, seq: int, ack: int, flags: int, ip_id: int, data: bytes = b"") -> None:
    """A packet that every point sees as one frame (10 µs a hop, TTL one less per node)."""
    way = POINTS if request else POINTS[::-1]
    for hop, point in enumerate(way):
        ttl = 64 - (0 if hop == 0 else 1 if hop < 3 else 2)
        src, dst, sport, dport = (CURL, HTTPBIN, 40000, 80) if request else (HTTPBIN, CURL, 80, 40000)
        ip = ipv4(src, dst, 6, tcp(sport, dport, seq=seq, ack=ack, flags=flags, payload=data), ttl=ttl, ip_id=ip_id)
        c.add(point, t + hop * 1e-5, frame_at(point, ip, request))


def data_ip(first: int, last: int, ttl: int, ip_id: int, push: bool, ack: int) -> bytes:
    """The server's segments [first, last) of its data in one packet."""
    payload = bytes((first + i) % 251 for i in range((last - first) * MSS))
    flags = 0x18 if push else 0x10
    return ipv4(HTTPBIN, CURL, 6, tcp(80, 40000, seq=SSEQ + 1 + first * MSS, ack=ack, flags=flags, payload=payload),
                ttl=ttl, ip_id=ip_id)


def exchange(run: Path, *, lose: int | None = None) -> None:
    """Handshake, GET, the response's two super-frames cut and merged on the way, the client's
    ACKs, FINs. `lose`: that wire segment never reaches worker1 (GRO merges around it), and the
    server sends it again 200 ms later, as one frame all the way."""
    c = Captures()
    get = b"GET /bytes/17376 HTTP/1.1\r\nHost: httpbin\r\n\r\n"
    whole(c, T0, True, CSEQ, 0, 0x02, 1)
    whole(c, T0 + 0.001, False, SSEQ, CSEQ + 1, 0x12, 0)
    whole(c, T0 + 0.002, True, CSEQ + 1, SSEQ + 1, 0x10, 2)
    whole(c, T0 + 0.003, True, CSEQ + 1, SSEQ + 1, 0x18, 3, get)
    ack = CSEQ + 1 + len(get)
    t = T0 + 0.010
    for u, (a, b) in enumerate(UNITS):  # the server's veth: each super-frame whole
        c.add("worker2/cali2", t + u * 1e-4, frame_at("worker2/cali2", data_ip(a, b, 64, 700 + 8 * u, u == 1, ack), False))
        for k in range(a, b):  # worker2/eth1: GSO's frames, TTL 63, IP ID one up per frame, PSH on the last
            c.add("worker2/eth1", t + u * 1e-4 + 2e-5 + (k - a) * 1e-6,
                  frame_at("worker2/eth1", data_ip(k, k + 1, 63, 700 + 8 * u + k - a, u == 1 and k == b - 1, ack), False))
    for i, (a, b) in enumerate(GRO):  # worker1: GRO's frames (the IP ID of their first), on to the pod
        kept = [k for k in range(a, b) if k != lose]
        runs = [[kept[0]]] if kept else []
        for k in kept[1:]:
            if k == runs[-1][-1] + 1:
                runs[-1].append(k)
            else:
                runs.append([k])  # (GRO closes a frame at a hole)
        for r in runs:
            first_id = 700 + r[0]  # (the IP ID of the wire's frame it begins with)
            for point, ttl, dt in (("worker1/eth1", 63, 4e-4), ("worker1/cali1", 62, 4.1e-4)):
                c.add(point, t + dt + i * 1e-6, frame_at(point, data_ip(r[0], r[-1] + 1, ttl, first_id, r[-1] == 11, ack), False))
    end = SSEQ + 1 + 12 * MSS
    if lose is not None:
        whole(c, T0 + 0.210, False, SSEQ + 1 + lose * MSS, ack, 0x10, 716,
              bytes((lose + i) % 251 for i in range(MSS)))
    whole(c, T0 + 0.300, True, ack, end, 0x10, 4)
    whole(c, T0 + 0.301, True, ack, end, 0x11, 5)
    whole(c, T0 + 0.302, False, end, ack + 1, 0x11, 717)
    whole(c, T0 + 0.303, True, ack + 1, end + 1, 0x10, 6)
    c.write(run)


def response_data(flow: dict) -> list[dict]:
    return [p for p in flow["packets"] if p["direction"] == "response" and p["payload_bytes"]]


def carried_bytes(hop: dict, packet: dict) -> int:
    return hop["carried"]["bytes"] if hop["carried"] else packet["payload_bytes"]


def test_super_frames_cut_and_merged_are_the_same_bytes_at_every_point(tmp_path: Path, capsys) -> None:
    exchange(tmp_path)
    doc = analyze_json(capsys, str(tmp_path))
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    data = response_data(flow)
    assert [p["payload_bytes"] for p in data] == [8 * MSS, 4 * MSS]  # the sender's units, not the wire's
    way = list(POINTS[::-1])
    for p in data:
        assert [h["point"] for h in p["hops"]] == way and p["missing"] == [] and not p["retransmission"]
        hops = {h["point"]: h for h in p["hops"]}
        assert hops["worker2/cali2"]["carried"] is None
        assert hops["worker1/cali1"]["carried"] is not None  # (the merged frames go on to the pod as they are)
    first, second = ({h["point"]: h["carried"] for h in p["hops"]} for p in data)
    assert first["worker2/eth1"]["how"] == "segmented" and first["worker2/eth1"]["frames"] == 8
    assert first["worker2/eth1"]["by"] == "TSO/GSO" and first["worker2/eth1"]["bytes"] == 8 * MSS
    assert first["worker2/eth1"]["frame_bytes"] == [14 + 20 + 20 + MSS] * 8
    assert second["worker2/eth1"]["frames"] == 4
    # GRO: the first super-frame's bytes in 3 frames, the last of them shared with the second's
    assert first["worker1/eth1"]["how"] == "merged" and first["worker1/eth1"]["frames"] == 3
    assert first["worker1/eth1"]["by"] == "GRO" and first["worker1/eth1"]["bytes"] == 8 * MSS
    assert second["worker1/eth1"]["frames"] == 2 and second["worker1/eth1"]["bytes"] == 4 * MSS
    assert "segmented into 8 frames (TSO/GSO)" in first["worker2/eth1"]["note"]
    assert flow["summary"]["reached_end"] == flow["summary"]["packets"] == len(flow["packets"])


@needs_tshark
def test_tshark_counts_the_same_bytes_at_every_point(tmp_path: Path, capsys) -> None:
    exchange(tmp_path)
    doc = analyze_json(capsys, str(tmp_path))
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    for point in POINTS:
        node, iface = point.split("/")
        lines = tshark_lines(tmp_path / node / f"{iface}.pcap", "-o", "tcp.relative_sequence_numbers:FALSE",
                             "-Y", "tcp.srcport == 80 && tcp.len > 0", "-T", "fields", "-e", "tcp.seq", "-e", "tcp.len")
        theirs = sum(int(line.split()[1]) for line in lines)
        ours = sum(carried_bytes(h, p) for p in response_data(flow) for h in p["hops"] if h["point"] == point)
        assert ours == theirs == 12 * MSS, point
        shared = 1 if node == "worker1" else 0  # (after GRO one frame carries both packets' bytes: tshark counts it once)
        assert sum((h["carried"] or {"frames": 1})["frames"] for p in response_data(flow)
                   for h in p["hops"] if h["point"] == point) == len(lines) + shared, point


def test_a_wire_frame_lost_on_the_way_is_lost_and_its_retransmission_a_packet_of_its_own(tmp_path: Path, capsys) -> None:
    exchange(tmp_path, lose=4)
    doc = analyze_json(capsys, str(tmp_path))
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    data = response_data(flow)
    assert [p["payload_bytes"] for p in data] == [8 * MSS, 4 * MSS, MSS]
    first, second, again = data
    assert first["last_seen"] == "worker2/eth1" and first["missing"] == ["worker1/eth1", "worker1/cali1"]
    assert second["missing"] == [] and not second["retransmission"]
    assert again["retransmission"] and again["missing"] == [] and [h["carried"] for h in again["hops"]] == [None] * 4
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--summary", "-o", "json")
    seg = {(s["src"], s["dst"]): s for s in json.loads(out)["summary"]["segments"]}
    assert seg[("worker2/eth1", "worker1/eth1")]["lost"] == 1


@pytest.mark.parametrize("lose", [None, 4])
def test_summary_mode_counts_the_same_packets(tmp_path: Path, capsys, lose) -> None:
    exchange(tmp_path, lose=lose)
    kept = analyze_json(capsys, str(tmp_path))
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--summary", "-o", "json")
    assert code == 0, err
    summary = json.loads(out)
    for k, s in zip(kept["flows"], summary["flows"], strict=True):
        assert s["summary"]["packets"] == k["summary"]["packets"] == len(k["packets"])
        assert s["summary"]["reached_end"] == k["summary"]["reached_end"]
        assert s["summary"]["per_point"] == k["summary"]["per_point"]
    assert sum(s["lost"] for s in summary["summary"]["segments"]) == (0 if lose is None else 1)
    # bytes beside packets: each packet's once, as sent; lost ones in the segment they were lost in
    get = len(b"GET /bytes/17376 HTTP/1.1\r\nHost: httpbin\r\n\r\n")
    flow = summary["flows"][0]["summary"]
    assert flow["bytes"] == get + 12 * MSS + (0 if lose is None else MSS)
    assert flow["bytes_per_point"]["worker2/cali2"] == flow["bytes"]
    assert flow["bytes_reached_end"] == flow["bytes"] - (0 if lose is None else 8 * MSS)
    assert sum(s["bytes_lost"] for s in summary["summary"]["segments"]) == (0 if lose is None else 8 * MSS)
