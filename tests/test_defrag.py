"""A tunnel packet fragmented on the underlay (tracer.capture.defrag): put together before it is
decoded, matched to the whole packet at the other points, the hop saying "fragmented into 2".

Real kernel captures: the sample pcaps/vxlan-fragments (recorded by pcaps/record.py: both eth1 at
MTU 1400 under vxlan.calico's 1450, 1,400-byte UDP datagrams without DF) and a lab run of the same;
tshark, putting the fragments together itself, finds the same packets. Crafted files: fragments
out of order, one missing (given back as captured), a cooked `-i any` capture, both readers
(summary mode's fast path and the general one) alike.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from conftest import make_store, ns_run
from factories import (
    CURL, HTTPBIN, NIC1_MAC, NIC2_MAC, NODE1, NODE2, SAMPLES, analyze_json, eth, ipv4, needs_tshark, pcap_bytes,
    run_cli, sll2_frame, tshark_lines, udp, vxlan,
)
from tracer.capture.defrag import MAX_AGE, Defrag
from tracer.cluster.lab import down, up
from tracer.cluster.lab.topology import exercise
from tracer.decode import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, decode

SAMPLE = SAMPLES / "vxlan-fragments"
VX1, VX2 = "66:ca:11:c0:00:01", "66:ca:11:c0:00:02"


def datagram(n: int = 1400, ip_id: int = 77) -> bytes:
    """curl's UDP datagram to httpbin:9999, no DF, inside worker1's VXLAN frame."""
    inner = eth(VX1, VX2, 0x0800, ipv4(CURL, HTTPBIN, 17, udp(40000, 9999, bytes(range(256)) * (n // 256) + bytes(n % 256)),
                                        ttl=63, ip_id=ip_id, df=False))
    return ipv4(NODE1, NODE2, 17, udp(50000, 4789, vxlan(4096, inner)), ttl=64, ip_id=900 + ip_id, df=False)


def fragments(packet: bytes, mtu: int = 1400) -> list[bytes]:
    """An IPv4 packet cut as the kernel's ip_fragment cuts it: 8-byte multiples of payload."""
    head, body = packet[:20], packet[20:]
    step = (mtu - 20) // 8 * 8
    out = []
    for off in range(0, len(body), step):
        part = body[off:off + step]
        more = off + step < len(body)
        h = bytearray(head)
        h[2:4] = (20 + len(part)).to_bytes(2, "big")
        h[6:8] = ((0x2000 if more else 0) | off // 8).to_bytes(2, "big")
        out.append(bytes(h) + part)
    return out


def on_wire(ip: bytes) -> bytes:
    return eth(NIC1_MAC, NIC2_MAC, 0x0800, ip)


def test_fragments_out_of_order_make_the_packet_the_other_points_see() -> None:
    whole = datagram()
    pieces = fragments(whole)
    assert len(pieces) == 2
    d = Defrag()
    a, b = on_wire(pieces[0]), on_wire(pieces[1])
    assert d.feed(LINKTYPE_ETHERNET, b, len(b), 1.0002) == []  # (the last first: held)
    [(data, orig, t, sizes, _)] = d.feed(LINKTYPE_ETHERNET, a, len(a), 1.0001)
    assert data == on_wire(whole) and orig == len(data) and t == 1.0001
    assert sizes == (len(a), len(b))  # (in the packet's order)
    fr = decode(LINKTYPE_ETHERNET, data, orig)
    assert fr.tunnels and fr.tunnels[0].type == "vxlan" and fr.payload_len == 1400 and fr.dport == 9999
    assert d.flush() == []


def test_what_never_comes_together_is_given_back_as_captured() -> None:
    pieces = fragments(datagram(ip_id=1))
    d = Defrag()
    assert d.feed(LINKTYPE_ETHERNET, on_wire(pieces[0]), 0, 5.0) == []
    other = on_wire(ipv4(NODE1, NODE2, 6, bytes(20)))
    later = d.feed(LINKTYPE_ETHERNET, other, 0, 5.0 + MAX_AGE + 0.1)  # (the rest never came: aged out)
    assert [(x[0], x[2]) for x in later] == [(on_wire(pieces[0]), 5.0), (other, 5.0 + MAX_AGE + 0.1)]
    assert d.feed(LINKTYPE_ETHERNET, on_wire(fragments(datagram(ip_id=2))[1]), 0, 9.0) == []
    assert [x[2] for x in d.flush()] == [9.0]  # (the file ended)


def test_a_cooked_any_capture_keeps_each_interfaces_fragments_apart() -> None:
    pieces = fragments(datagram(ip_id=3))
    d = Defrag()
    a0 = sll2_frame(pieces[0], ifindex=2)
    b0 = sll2_frame(pieces[0], ifindex=5)
    assert d.feed(LINKTYPE_LINUX_SLL2, a0, 0, 1.0) == [] and d.feed(LINKTYPE_LINUX_SLL2, b0, 0, 1.0) == []
    [whole] = d.feed(LINKTYPE_LINUX_SLL2, sll2_frame(pieces[1], ifindex=5), 0, 1.1)
    assert whole[0][:20] == b0[:20] and decode(LINKTYPE_LINUX_SLL2, whole[0], whole[1]).payload_len == 1400
    assert len(d.flush()) == 1


def test_a_crafted_way_matches_the_fragments_to_the_whole_packet_in_both_readers(tmp_path: Path, capsys) -> None:
    pkts = [datagram(ip_id=k) for k in (10, 11)]
    inner = [p[20 + 8 + 8:] for p in pkts]  # (the inner Ethernet frames)
    for node, point in (("worker1", "vxlan.calico"), ("worker2", "vxlan.calico")):
        (tmp_path / node).mkdir(exist_ok=True)
        (tmp_path / node / f"{point}.pcap").write_bytes(
            pcap_bytes(inner, times=[1.0 + k / 10 + (0 if node == "worker1" else 3e-5) for k in range(2)], nanos=True))
    for node in ("worker1", "worker2"):
        wire = [on_wire(f) for p in pkts for f in fragments(p)]
        dt = 1e-5 if node == "worker1" else 2e-5
        (tmp_path / node / "eth1.pcap").write_bytes(
            pcap_bytes(wire, times=[1.0 + k // 2 / 10 + dt + k % 2 * 1e-6 for k in range(4)], nanos=True))
    doc = analyze_json(capsys, str(tmp_path))
    [flow] = [f for f in doc["flows"] if f["protocol"] == "udp"]
    assert len(flow["packets"]) == 2
    for p in flow["packets"]:
        assert [h["point"] for h in p["hops"]] == ["worker1/vxlan.calico", "worker1/eth1", "worker2/eth1",
                                                   "worker2/vxlan.calico"]
        carried = [h["carried"] and h["carried"]["how"] for h in p["hops"]]
        assert carried == [None, "fragmented", "fragmented", "reassembled"]
        assert p["hops"][1]["carried"]["frames"] == 2 and "fragmented into 2 frames" in p["hops"][1]["carried"]["note"]
    points = {pt["id"]: pt["packets"] for pt in doc["points"]}
    assert points["worker1/eth1"] == 4  # (frames read: both fragments of each)
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--summary", "-o", "json")
    summary = json.loads(out)
    assert summary["flows"][0]["summary"]["reached_end"] == 2 and {pt["id"]: pt["packets"] for pt in summary["points"]} == points


def test_the_recorded_sample_every_packet_at_every_point(capsys) -> None:
    doc = analyze_json(capsys, str(SAMPLE))
    [flow] = [f for f in doc["flows"] if f["protocol"] == "udp"]
    assert len(flow["packets"]) == 2 and flow["summary"]["reached_end"] == 2
    for p in flow["packets"]:
        assert p["missing"] == [] and len(p["hops"]) == 8
        hops = {h["point"]: h["carried"] for h in p["hops"]}
        assert hops["worker1/eth1"]["how"] == hops["worker2/eth1"]["how"] == "fragmented"
        assert hops["worker1/eth1"]["frames"] == 2


@needs_tshark
def test_tshark_puts_the_same_packets_together(capsys) -> None:
    doc = analyze_json(capsys, str(SAMPLE))
    [flow] = [f for f in doc["flows"] if f["protocol"] == "udp"]
    ours = sorted(h["ip_id"] for p in flow["packets"] for h in p["hops"] if h["point"] == "worker1/eth1")
    # tshark reassembles by default: the inner datagram shows once per packet, on its last fragment
    lines = tshark_lines(SAMPLE / "worker1" / "eth1.pcap", "-d", "udp.port==4789,vxlan", "-Y", "udp.dstport == 9999 && !icmp",
                         "-T", "fields", "-E", "occurrence=l", "-e", "ip.id", "-e", "udp.length")
    theirs = sorted(int(line.split()[0], 16) for line in lines)
    assert ours == theirs and len(theirs) == 2
    assert all(int(line.split()[1]) == 1408 for line in lines)


@pytest.mark.root
def test_a_lab_run_with_the_underlay_mtu_under_the_tunnels(tmp_path: Path, capsys) -> None:
    store = make_store("f" + secrets.token_hex(2))
    lab = up(exercise(), store=store)
    procs = []
    try:
        for node in ("worker1", "worker2"):
            ns_run(lab.node(node).netns, "ip", "link", "set", "eth1", "mtu", "1400")
        for where, dev in (("worker1", "eth1"), ("worker2", "eth1"), ("worker1", "vxlan.calico"),
                           ("worker2", "vxlan.calico")):
            (tmp_path / where).mkdir(exist_ok=True)
            procs.append(lab.popen(where, ["tcpdump", "--immediate-mode", "-U", "-n", "-s", "0", "-i", dev, "-w",
                                           str(tmp_path / where / f"{dev}.pcap")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for p in procs:  # (each listening before anything is sent)
            seen = b""
            while b"listening on" not in seen:
                seen += p.stderr.read1(4096)
        lab.exec("curl", ["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                          "s.setsockopt(socket.IPPROTO_IP, 10, 0); s.sendto(bytes(1400), ('172.18.104.14', 9999))"])
        time.sleep(0.3)
    finally:
        for p in procs:
            p.send_signal(2)
            p.communicate(timeout=5)
        down(store)
    doc = analyze_json(capsys, str(tmp_path))
    [flow] = [f for f in doc["flows"] if f["protocol"] == "udp"]
    [p] = flow["packets"]
    assert [h["carried"] and h["carried"]["how"] for h in p["hops"]] == [None, "fragmented", "fragmented", "reassembled"]


def test_a_pods_own_fragments_stay_fragments_and_match_inside_the_tunnel(tmp_path: Path, capsys) -> None:
    """A datagram curl's stack cut (no DF, larger than the pod's MTU): its fragments at the pod's
    veth are the inner fragments inside VXLAN on eth1, one by one; nothing is put together."""
    whole = ipv4(CURL, HTTPBIN, 17, udp(40000, 9999, bytes(3000)), ttl=64, ip_id=500, df=False)
    pod_side = fragments(whole, mtu=1450)
    assert len(pod_side) == 3
    (tmp_path / "worker1").mkdir()
    (tmp_path / "worker1" / "cali1.pcap").write_bytes(pcap_bytes(
        [eth("0a:58:ac:12:a6:8b", "ee:ee:ee:ee:ee:ee", 0x0800, f) for f in pod_side],
        times=[1.0 + k * 1e-6 for k in range(3)], nanos=True))
    routed = [bytes(f[:8]) + bytes([63]) + f[9:] for f in pod_side]  # (TTL one less: worker1 routed them)
    wire = [on_wire(ipv4(NODE1, NODE2, 17, udp(50000, 4789, vxlan(4096, eth(VX1, VX2, 0x0800, f))), ip_id=700 + k,
                         df=False)) for k, f in enumerate(routed)]
    (tmp_path / "worker1" / "eth1.pcap").write_bytes(pcap_bytes(wire, times=[1.00002 + k * 1e-6 for k in range(3)],
                                                                nanos=True))
    for mode in ((), ("--summary",)):
        code, out, err = run_cli(capsys, "analyze", str(tmp_path), "-o", "json", *mode)
        assert code == 0, err
        doc = json.loads(out)
        flows = [f for f in doc["flows"] if f["protocol"] == "udp"]
        assert sum(f["summary"]["packets"] for f in flows) == 3
        assert all(f["summary"]["reached_end"] == f["summary"]["packets"] for f in flows)
        for f in flows:
            for p in f.get("packets", ()):
                assert [h["point"] for h in p["hops"]] == ["worker1/cali1", "worker1/eth1"]
                assert all(h["carried"] is None for h in p["hops"])


def test_pieces_of_more_than_an_ipv4_packet_are_given_back_not_a_crash() -> None:
    d = Defrag()
    head = bytearray(ipv4(NODE1, NODE2, 17, bytes(1480), df=False, ip_id=9))
    out = []
    for off in range(0, 65536 + 1480, 1480):  # (offsets up to past 64 KiB: no real packet)
        h = bytearray(head)
        last = off + 1480 > 65536
        h[6:8] = ((0 if last else 0x2000) | min(off // 8, 0x1FFF)).to_bytes(2, "big")
        out += d.feed(LINKTYPE_ETHERNET, on_wire(bytes(h)), 0, 1.0)
    out += d.flush()
    assert all(x[3] is None for x in out) and len(out) == len(range(0, 65536 + 1480, 1480))
