"""ARP as packets of the way (step 3.3 of the exercise): the pod's who-has for its gateway and
Calico's proxy-ARP answer, in analyze's views, its JSON and the merged pcapng, checked against
tshark's reading of the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import (
    CURL, CURL_MAC, HTTPBIN, PUBLIC, analyze_json, arp, eth, ipv4, needs_tshark, pcap_bytes, run_cli, tcp,
    tshark_lines,
)

CALI = "ee:ee:ee:ee:ee:ee"
GATEWAY = "169.254.1.1"
BROADCAST = "ff:ff:ff:ff:ff:ff"
LLDP = eth("52:54:00:00:56:0b", "01:80:c2:00:00:0e", 0x88CC, bytes(46))


def gateway_exchange(unanswered: int = 0) -> list[bytes]:
    """curl resolves 169.254.1.1 (broadcast who-has, proxy-ARP reply), then sends its SYN."""
    who_has = eth(CURL_MAC, BROADCAST, 0x0806, arp(1, CURL_MAC, CURL, "00:00:00:00:00:00", GATEWAY))
    if unanswered:
        return [who_has] * unanswered
    return [who_has, eth(CALI, CURL_MAC, 0x0806, arp(2, CALI, GATEWAY, CURL_MAC, CURL)),
            eth(CURL_MAC, CALI, 0x0800, ipv4(CURL, HTTPBIN, 6, tcp(45688, 80, flags=0x02), ip_id=7))]


def write(tmp_path, frames: list[bytes], name: str = "worker1/cali35e3a5cb80b") -> str:
    node, iface = name.split("/")
    (tmp_path / node).mkdir(exist_ok=True)
    path = tmp_path / node / f"{iface}.pcap"
    path.write_bytes(pcap_bytes(frames, times=[1700000000.0 + i / 1000 for i in range(len(frames))]))
    return str(path)


def arp_flow(doc: dict) -> dict:
    [flow] = [f for f in doc["flows"] if f["protocol"] == "arp"]
    return flow


def test_the_gateway_exchange_is_a_flow_of_two_packets(tmp_path, capsys):
    doc = analyze_json(capsys, write(tmp_path, gateway_exchange()), "--all-flows")
    flow = arp_flow(doc)
    assert (flow["client"], flow["server"]) == (CURL, GATEWAY)
    ask, answer = flow["packets"]
    assert (ask["direction"], answer["direction"]) == ("request", "response")
    assert ask["summary"] == f"ARP who-has {GATEWAY} tell {CURL}"
    assert answer["summary"] == f"ARP {GATEWAY} is-at {CALI}"
    [h] = ask["hops"]
    assert h["ttl"] is None and h["arp"] == {"op": "request", "sender_mac": CURL_MAC, "sender_ip": CURL,
                                              "target_mac": "00:00:00:00:00:00", "target_ip": GATEWAY}
    assert (h["ip_src"], h["ip_dst"], h["eth_dst"]) == (CURL, GATEWAY, BROADCAST)
    assert "proxy-ARP" in answer["hops"][0]["why"]
    assert answer["hops"][0]["arp"]["sender_mac"] == CALI
    assert flow["summary"]["reached_end"] == 2  # (an ARP packet's way is its link: it went nowhere else)
    # the TCP flow is still the one shown by default, with its exchange beside it
    code, out, _ = run_cli(capsys, "analyze", str(tmp_path), "--view", "hops")
    assert code == 0
    assert f"who-has {GATEWAY} tell {CURL}" in out and f"answer: {GATEWAY} is at {CALI}" in out
    assert "TTL None" not in out


def test_an_unanswered_request_says_so(tmp_path, capsys):
    doc = analyze_json(capsys, write(tmp_path, gateway_exchange(unanswered=3)))
    flow = arp_flow(doc)
    assert [p["direction"] for p in flow["packets"]] == ["request"] * 3
    code, out, _ = run_cli(capsys, "analyze", str(tmp_path), "--view", "grid")
    assert code == 0
    assert f"{CURL} asked for {GATEWAY} 3 times" in out and "no answer seen" in out


@needs_tshark
def test_arp_of_a_public_vxlan_capture_as_tshark_reads_it(capsys):
    """zeek's capture: ARP inside VXLAN VNI 123, then pings."""
    path = PUBLIC / "zeek-vxlan4789-arp-icmp.pcap"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    flow = arp_flow(analyze_json(capsys, str(path), "--all-flows"))
    theirs = [line.split("\t") for line in tshark_lines(path, "-Y", "arp", "-T", "fields", "-e", "arp.opcode",
                                                        "-e", "arp.src.proto_ipv4", "-e", "arp.src.hw_mac",
                                                        "-e", "arp.dst.proto_ipv4", "-e", "vxlan.vni")]
    ours = [(str({"request": 1, "reply": 2}[h["arp"]["op"]]), h["arp"]["sender_ip"], h["arp"]["sender_mac"],
             h["arp"]["target_ip"], str(h["encap"]["vni"])) for p in flow["packets"] for h in p["hops"]]
    assert ours == [tuple(t) for t in theirs] and len(ours) == 2


@needs_tshark
def test_the_merged_pcapng_holds_every_frame_read(tmp_path, capsys):
    """ARP frames are packets of a flow; a frame of no flow (LLDP) is written too, saying why."""
    src = write(tmp_path, [LLDP, *gateway_exchange()])
    out = tmp_path / "merged.pcapng"
    analyze_json(capsys, src, "--pcapng", str(out))
    rows = [line.split("\t") for line in tshark_lines(out, "-T", "fields", "-e", "_ws.col.Protocol", "-e", "frame.comment")]
    assert len(rows) == len(tshark_lines(Path(src))) == 4
    by_proto = {proto: comment for proto, comment in rows}
    assert by_proto["LLDP"].startswith("not followed: ethertype 0x88cc")
    assert "ARP who-has 169.254.1.1" in [c for p, c in rows if p == "ARP"][0]
    assert all(", TTL None" not in c for _, c in rows)
