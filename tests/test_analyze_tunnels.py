"""analyze, from the captures alone (no path.json), on the two data paths this kernel cannot
build: Calico IPIP (tunl0 captured as raw IP, DLT_RAW: no link layer; IP protocol 4 on the
underlay) and Cilium Geneve (UDP 6081 with options, each direction's VNI its sender's security
identity). The captures are crafted byte by byte (tests/factories.py) as each point of those
ways shows the exchange (DATAPATHS.md §3, §6); tshark decodes the same files as a check of the
bytes. Roles, the order of the points, the encapsulation at each hop and no loss must follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import (
    CURL, CURL_MAC, HTTPBIN, HTTPBIN_MAC, NIC1_MAC, NIC2_MAC, NODE1, NODE2, analyze_json, eth, geneve, ipv4,
    needs_tshark, pcap_bytes, tcp, tshark_lines, udp,
)

LINKTYPE_RAW = 101
CALI1_MAC, CALI2_MAC = "ee:ee:ee:ee:ee:ee", "ee:ee:ee:ee:ee:ee"
LXC1_MAC, LXC2_MAC = "02:aa:00:00:00:01", "02:aa:00:00:00:02"
GENEVE1_MAC, GENEVE2_MAC = "7a:00:00:00:03:01", "7a:00:00:00:03:02"
EXCHANGE = ((CURL, HTTPBIN, 40000, 80, 0x02, 1000, 0), (HTTPBIN, CURL, 80, 40000, 0x12, 5000, 1001),
            (CURL, HTTPBIN, 40000, 80, 0x10, 1001, 5001))
"""SYN, SYN-ACK, ACK: (source, destination, ports, flags, seq, ack)."""


def write(run: Path, point: str, frames: list[bytes], times: list[float], linktype: int = 1) -> None:
    node, iface = point.split("/")
    (run / node).mkdir(parents=True, exist_ok=True)
    (run / node / f"{iface}.pcap").write_bytes(pcap_bytes(frames, linktype=linktype, times=times, nanos=True))


def captures(run: Path, way: list[tuple[str, object]]) -> None:
    """Each packet of EXCHANGE at each point of its way (the reply on the way back), 10 µs a hop.
    `way`: (point, frame(packet ip, ttl, request?) -> bytes, and its link type)."""
    out: dict[str, tuple[list[bytes], list[float], int]] = {}
    for k, (src, dst, sport, dport, flags, seq, ack) in enumerate(EXCHANGE):
        request = src == CURL
        points = way if request else way[::-1]
        for hop, (point, make, linktype) in enumerate(points):
            ttl = 64 - (0 if hop == 0 else 1 if hop < len(points) - 1 else 2)  # (routed out of the pod, into the other)
            ip = ipv4(src, dst, 6, tcp(sport, dport, seq=seq, ack=ack, flags=flags), ttl=ttl, ip_id=100 + k)
            frames, times, _ = out.setdefault(point, ([], [], linktype))
            frames.append(make(ip, request))
            times.append(1700000000.0 + k * 0.001 + hop * 0.00001)
    for point, (frames, times, linktype) in out.items():
        write(run, point, frames, times, linktype)


def test_calico_ipip_raw_ip_tunl0_and_protocol_4_on_the_wire(tmp_path: Path, capsys) -> None:
    def pod_side(pod_mac, host_mac, near_request):
        # the pod's frames go to the veth's MAC (proxy-ARP); the node's into the pod from it
        return lambda ip, request: eth(pod_mac, host_mac, 0x0800, ip) if request == near_request else \
            eth(host_mac, pod_mac, 0x0800, ip)

    def wire(ip, request):
        outer = ipv4(NODE1, NODE2, 4, ip, ttl=64) if request else ipv4(NODE2, NODE1, 4, ip, ttl=64)
        return eth(NIC1_MAC, NIC2_MAC, 0x0800, outer) if request else eth(NIC2_MAC, NIC1_MAC, 0x0800, outer)

    raw = lambda ip, request: ip  # noqa: E731 - tunl0: the IP packet itself
    captures(tmp_path, [("worker1/cali1", pod_side(CURL_MAC, CALI1_MAC, True), 1),
                        ("worker1/tunl0", raw, LINKTYPE_RAW), ("worker1/eth1", wire, 1), ("worker2/eth1", wire, 1),
                        ("worker2/tunl0", raw, LINKTYPE_RAW), ("worker2/cali2", pod_side(HTTPBIN_MAC, CALI2_MAC, False), 1)])
    doc = analyze_json(capsys, str(tmp_path))
    roles = {p["id"]: p["role"] for p in doc["points"]}
    assert roles == {"worker1/cali1": "pod-veth", "worker1/tunl0": "tunnel", "worker1/eth1": "underlay",
                     "worker2/eth1": "underlay", "worker2/tunl0": "tunnel", "worker2/cali2": "pod-veth"}
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    way = ["worker1/cali1", "worker1/tunl0", "worker1/eth1", "worker2/eth1", "worker2/tunl0", "worker2/cali2"]
    for p in flow["packets"]:
        assert [h["point"] for h in p["hops"]] == (way if p["direction"] == "request" else way[::-1]), p["summary"]
        assert p["missing"] == []
    syn = flow["packets"][0]
    nic = syn["hops"][2]
    assert nic["encap"]["type"] == "ipip" and (nic["encap"]["outer_ip_src"], nic["encap"]["outer_ip_dst"]) == (NODE1, NODE2)
    assert syn["hops"][1]["eth_src"] in (None, "") and syn["hops"][1]["encap"] is None  # (raw IP: no MACs)
    assert [h["ttl"] for h in syn["hops"]] == [64, 63, 63, 63, 63, 62]


@needs_tshark
def test_the_crafted_ipip_captures_are_what_tshark_reads(tmp_path: Path, capsys) -> None:
    test_calico_ipip_raw_ip_tunl0_and_protocol_4_on_the_wire(tmp_path, capsys)
    assert tshark_lines(tmp_path / "worker1" / "tunl0.pcap", "-T", "fields", "-e", "ip.src", "-e", "tcp.flags.str")[0] \
        .startswith(CURL)
    wire = tshark_lines(tmp_path / "worker1" / "eth1.pcap", "-T", "fields", "-e", "ip.proto", "-e", "ip.src")
    assert wire[0].split("\t") == ["4,6", f"{NODE1},{CURL}"]


@pytest.mark.parametrize("options", [b"", bytes.fromhex("0103 0101 0000 0001")], ids=["no-options", "one-option"])
def test_cilium_geneve_with_options_and_a_vni_per_sender(tmp_path: Path, capsys, options: bytes) -> None:
    identities = {CURL: 12345, HTTPBIN: 23456}

    def pod_side(pod_mac, host_mac, near_request):
        return lambda ip, request: eth(pod_mac, host_mac, 0x0800, ip) if request == near_request else \
            eth(host_mac, pod_mac, 0x0800, ip)

    def dev(ip, request):
        return eth(GENEVE1_MAC, GENEVE2_MAC, 0x0800, ip) if request else eth(GENEVE2_MAC, GENEVE1_MAC, 0x0800, ip)

    def wire(ip, request):
        src = CURL if request else HTTPBIN
        inner = dev(ip, request)
        body = udp(50000 + request, 6081, geneve(identities[src], inner, options))
        outer = ipv4(NODE1, NODE2, 17, body) if request else ipv4(NODE2, NODE1, 17, body)
        return eth(NIC1_MAC, NIC2_MAC, 0x0800, outer) if request else eth(NIC2_MAC, NIC1_MAC, 0x0800, outer)

    captures(tmp_path, [("worker1/lxc1", pod_side(CURL_MAC, LXC1_MAC, True), 1), ("worker1/cilium_geneve", dev, 1),
                        ("worker1/eth1", wire, 1), ("worker2/eth1", wire, 1), ("worker2/cilium_geneve", dev, 1),
                        ("worker2/lxc2", pod_side(HTTPBIN_MAC, LXC2_MAC, False), 1)])
    doc = analyze_json(capsys, str(tmp_path))
    roles = {p["id"]: p["role"] for p in doc["points"]}
    assert roles == {"worker1/lxc1": "pod-veth", "worker1/cilium_geneve": "tunnel", "worker1/eth1": "underlay",
                     "worker2/eth1": "underlay", "worker2/cilium_geneve": "tunnel", "worker2/lxc2": "pod-veth"}
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    way = ["worker1/lxc1", "worker1/cilium_geneve", "worker1/eth1", "worker2/eth1", "worker2/cilium_geneve",
           "worker2/lxc2"]
    for p in flow["packets"]:
        assert [h["point"] for h in p["hops"]] == (way if p["direction"] == "request" else way[::-1]), p["summary"]
        assert p["missing"] == []
        encap = next(h["encap"] for h in p["hops"] if h["encap"])
        sender = CURL if p["direction"] == "request" else HTTPBIN
        assert (encap["type"], encap["vni"], encap["udp_dport"]) == ("geneve", identities[sender], 6081)
