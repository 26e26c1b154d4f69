"""Flows: who is the client, which packets are requests, and how the same packet is matched
across points when only some of its headers change (table-driven, on built packets)."""

from __future__ import annotations

import struct

import pytest

from factories import (
    CURL, CURL_MAC, HTTPBIN, HTTPBIN_MAC, NIC1_MAC, NIC2_MAC, NODE1, NODE2, PUBLIC, VXLAN1_MAC, VXLAN2_MAC,
    analyze_json, eth, ipv4, pcap_bytes, tcp, udp, vxlan,
)

CALI = "ee:ee:ee:ee:ee:ee"


def icmp_echo(kind: int, ident: int, seq: int) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"ping" * 8


def write_points(tmp_path, points: dict[str, list[bytes]], t0: float = 1700000000.0) -> str:
    """<tmp>/<node>/<interface>.pcap for each point; frame i at t0 + i ms (+ 10 µs per point)."""
    for k, (pid, frames) in enumerate(points.items()):
        node, iface = pid.split("/")
        (tmp_path / node).mkdir(exist_ok=True)
        times = [t0 + i / 1000 + k * 1e-5 for i in range(len(frames))]
        (tmp_path / node / f"{iface}.pcap").write_bytes(pcap_bytes(frames, times=times))
    return str(tmp_path)


def ping_exchange(ttl_drop: int = 0) -> list[bytes]:
    frames = []
    for seq in (1, 2, 3):
        frames.append(eth(CURL_MAC, CALI, 0x0800, ipv4(CURL, HTTPBIN, 1, icmp_echo(8, 77, seq), ip_id=100 + seq)))
        frames.append(eth(CALI, CURL_MAC, 0x0800, ipv4(HTTPBIN, CURL, 1, icmp_echo(0, 77, seq), ip_id=200 + seq,
                                                          ttl=62)))
    return frames


def test_icmp_echo_client_is_the_echo_request_sender(tmp_path, capsys):
    """No ports, no SYN: the pinging side is the client and its echo requests are the requests."""
    d = analyze_json(capsys, write_points(tmp_path, {"curl/eth0": ping_exchange()}), "--all-flows")
    [flow] = d["flows"]
    assert flow["protocol"] == "icmp"
    assert (flow["client"], flow["server"]) == (CURL, HTTPBIN)
    for p in flow["packets"]:
        want = "request" if "echo request" in p["summary"] else "response"
        assert p["direction"] == want, p["summary"]


def test_icmp_in_vxlan_public_capture_client(capsys):
    """zeek's VXLAN capture: 10.0.0.1 pings 10.0.0.2 (tshark: 'Echo (ping) request 10.0.0.1 -> 10.0.0.2')."""
    d = analyze_json(capsys, str(PUBLIC / "zeek-vxlan4789-arp-icmp.pcap"), "--all-flows")
    [flow] = [f for f in d["flows"] if f["protocol"] == "icmp"]
    assert flow["client"] == "10.0.0.1"
    assert {p["direction"] for p in flow["packets"] if "echo request" in p["summary"]} == {"request"}


@pytest.mark.parametrize("client_port,server_port", [(45688, 80), (53000, 53), (80, 45688)])
def test_tcp_client_is_the_syn_sender_whatever_the_ports(tmp_path, capsys, client_port, server_port):
    syn = eth(CURL_MAC, CALI, 0x0800, ipv4(CURL, HTTPBIN, 6, tcp(client_port, server_port, seq=1, flags=0x02), ip_id=1))
    synack = eth(CALI, CURL_MAC, 0x0800, ipv4(HTTPBIN, CURL, 6, tcp(server_port, client_port, seq=9, ack=2, flags=0x12),
                                               ip_id=0, ttl=62))
    d = analyze_json(capsys, write_points(tmp_path, {"curl/eth0": [syn, synack]}), "--all-flows")
    [flow] = d["flows"]
    assert (flow["client"], flow["server"]) == (f"{CURL}:{client_port}", f"{HTTPBIN}:{server_port}")
    assert [p["direction"] for p in flow["packets"]] == ["request", "response"]


def test_same_packet_matched_across_encapsulation_with_ip_id_zero(tmp_path, capsys):
    """Two different packets with IP ID 0 (Linux on DF SYN-ACKs) are not merged: TCP seq/ack tell them apart,
    while each one's pod, tunnel and underlay sightings are one packet."""
    def at_points(seq: int):
        inner = ipv4(HTTPBIN, CURL, 6, tcp(80, 45688, seq=seq, ack=5, flags=0x12), ip_id=0, ttl=64)
        routed = ipv4(HTTPBIN, CURL, 6, tcp(80, 45688, seq=seq, ack=5, flags=0x12), ip_id=0, ttl=63)
        return (eth(HTTPBIN_MAC, CALI, 0x0800, inner),
                eth(VXLAN2_MAC, VXLAN1_MAC, 0x0800, routed),
                eth(NIC2_MAC, NIC1_MAC, 0x0800, ipv4(NODE2, NODE1, 17, udp(40001, 4789, vxlan(
                    4096, eth(VXLAN2_MAC, VXLAN1_MAC, 0x0800, routed))), ip_id=7 + seq)))
    a, b = at_points(1000), at_points(5000)
    path = write_points(tmp_path, {"worker2/cali4a3c027cd7f": [a[0], b[0]], "worker2/vxlan.calico": [a[1], b[1]],
                                   "worker2/eth1": [a[2], b[2]]})
    d = analyze_json(capsys, path, "--all-flows")
    [flow] = d["flows"]
    assert len(flow["packets"]) == 2
    for p in flow["packets"]:
        assert [h["point"] for h in p["hops"]] == ["worker2/cali4a3c027cd7f", "worker2/vxlan.calico", "worker2/eth1"]
        assert [h["ttl"] for h in p["hops"]] == [64, 63, 63]
        assert [h["changes"] for h in p["hops"]][1:] == [["ttl", "mac"], ["encap"]]


@pytest.mark.parametrize("summary", [False, True])
def test_nat_is_placed_where_it_shows_first_on_the_way_even_if_the_first_packet_missed_that_point(
        tmp_path, capsys, summary):
    # kube-proxy on n1 DNATs 10.96.0.10:80 -> 10.0.1.5:8080. The first packet (an ACK) was not captured
    # at n1/eth0, so it shows translated first at n2/eth0; the SYN, 20 s (two windows) later, shows it
    # at n1/eth0. The ACK is done with first.
    a, b = "02:00:00:00:00:01", "02:00:00:00:00:02"
    def pk(dst: str, dport: int, ttl: int, seq: int, flags: int, ipid: int) -> bytes:
        return eth(a, b, 0x0800, ipv4("10.0.0.1", dst, 6, tcp(40000, dport, seq=seq, ack=0, flags=flags), ttl=ttl,
                                       ip_id=ipid))
    t = 1700000000.0
    points = {
        "n1/veth": [(t, pk("10.96.0.10", 80, 64, 5000, 0x10, 2)), (t + 20, pk("10.96.0.10", 80, 64, 1000, 0x02, 1))],
        "n1/eth0": [(t + 20.001, pk("10.0.1.5", 8080, 63, 1000, 0x02, 1))],
        "n2/eth0": [(t + 0.002, pk("10.0.1.5", 8080, 63, 5000, 0x10, 2)),
                    (t + 20.002, pk("10.0.1.5", 8080, 63, 1000, 0x02, 1))],
    }
    for pid, recs in points.items():
        node, iface = pid.split("/")
        (tmp_path / node).mkdir(exist_ok=True)
        (tmp_path / node / f"{iface}.pcap").write_bytes(pcap_bytes([f for _, f in recs], times=[s for s, _ in recs]))
    doc = analyze_json(capsys, str(tmp_path), *(["--summary"] if summary else []))
    assert doc["flows"][0]["nat"] == {"original": "10.96.0.10:80", "translated": "10.0.1.5:8080", "kind": "dnat",
                                      "point": "n1/eth0", "previous_point": "n1/veth"}


@pytest.mark.parametrize("summary", [False, True])
def test_a_nat_packet_joins_two_flows_and_later_packets_of_both_count_in_the_joined_one(tmp_path, capsys, summary):
    # kube-proxy on n1 DNATs 10.96.0.10:80 -> 10.0.1.5:8080. The first packets are each seen on one
    # side only (two flows, one per address pair); packet 3, seen on both sides, shows the NAT and
    # joins them; packets 4 and 5, again one side each, belong to the joined flow.
    a, b = "02:00:00:00:00:01", "02:00:00:00:00:02"

    def pk(pre_nat: bool, seq: int) -> bytes:
        dst, dport, ttl = ("10.96.0.10", 80, 64) if pre_nat else ("10.0.1.5", 8080, 63)
        return eth(a, b, 0x0800, ipv4("10.0.0.1", dst, 6, tcp(40000, dport, seq=seq, ack=1, flags=0x10), ttl=ttl,
                                       ip_id=seq))
    t = 1700000000.0
    points = {"n1/veth": [(t, pk(True, 1)), (t + 2, pk(True, 3)), (t + 4, pk(True, 4))],
              "n2/eth0": [(t + 0.001, pk(False, 2)), (t + 2.001, pk(False, 3)), (t + 4.001, pk(False, 5))]}
    for pid, recs in points.items():
        node, iface = pid.split("/")
        (tmp_path / node).mkdir(exist_ok=True)
        (tmp_path / node / f"{iface}.pcap").write_bytes(pcap_bytes([f for _, f in recs], times=[s for s, _ in recs]))
    doc = analyze_json(capsys, str(tmp_path), "--window", "0.5", "--all-flows", *(["--summary"] if summary else []))
    [flow] = doc["flows"]
    assert flow["nat"]["original"] == "10.96.0.10:80" and flow["nat"]["translated"] == "10.0.1.5:8080"
    if summary:
        assert flow["summary"]["packets"] == 5
    else:
        assert len(flow["packets"]) == 5


@pytest.mark.parametrize("summary", [False, True])
def test_a_pod_s_connection_out_of_the_cluster_is_snat_not_the_reply_s_dnat(tmp_path, capsys, summary):
    # curl -> 93.184.216.34:80, masqueraded on worker1's eth0 (source 10.0.2.15). The reply's
    # destination is put back to curl there: that is the SNAT undone, not a DNAT of the request,
    # and the server is the outside address, not curl.
    ext, node, gw, nic = "93.184.216.34", "10.0.2.15", "52:54:00:12:35:02", "52:54:00:00:00:01"
    t = 1700000000.0
    cali, eth0 = [], []
    for k, (flags, out) in enumerate(((0x02, True), (0x12, False), (0x10, True))):
        when = t + k * 0.01
        if out:
            seq, ack = 1000 + (k > 0), (5001 if k else 0)
            cali.append((when, eth(CURL_MAC, CALI, 0x0800, ipv4(CURL, ext, 6, tcp(40000, 80, flags=flags, seq=seq, ack=ack),
                                                                 ip_id=k))))
            eth0.append((when + 0.001, eth(nic, gw, 0x0800, ipv4(node, ext, 6, tcp(40000, 80, flags=flags, seq=seq, ack=ack),
                                                                  ttl=63, ip_id=k))))
        else:
            eth0.append((when, eth(gw, nic, 0x0800, ipv4(ext, node, 6, tcp(80, 40000, flags=flags, seq=5000, ack=1001),
                                                          ttl=50, ip_id=99))))
            cali.append((when + 0.001, eth(CALI, CURL_MAC, 0x0800, ipv4(ext, CURL, 6, tcp(80, 40000, flags=flags, seq=5000,
                                                                                          ack=1001), ttl=49, ip_id=99))))
    (tmp_path / "worker1").mkdir()
    for name, recs in (("cali35e3a5cb80b", cali), ("eth0", eth0)):
        (tmp_path / "worker1" / f"{name}.pcap").write_bytes(pcap_bytes([f for _, f in recs], times=[s for s, _ in recs]))
    doc = analyze_json(capsys, str(tmp_path), *(["--summary"] if summary else []))
    [flow] = doc["flows"]
    assert (flow["client"], flow["server"]) == (f"{CURL}:40000", f"{ext}:80")
    assert flow["nat"] == {"original": f"{CURL}:40000", "translated": f"{node}:40000", "kind": "snat",
                           "point": "worker1/eth0", "previous_point": "worker1/cali35e3a5cb80b"}
