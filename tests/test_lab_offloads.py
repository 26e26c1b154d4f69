"""The lab with real-NIC offloads (`lab up --offloads real`) and correlation by bytes, on real
kernel captures: the pods' veths and the tunnel devices see TSO super-frames, the sending eth1
the wire's MTU-sized frames (the kernel's GSO cuts before its tap), the receiving eth1 GRO's
merges; `tracer follow` shows every byte at every point and no packet lost, tshark's tcp.len per
frame adds up to what tracer counts at each point, and a real drop in the middle of the
transfer (iptables' statistic match dropping one tunnel packet on worker1) is still lost,
with its retransmission."""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

import pytest

from conftest import make_store, ns_run, run_tracer
from factories import needs_tshark, tshark_lines
from tracer.cluster.lab import down, up
from tracer.cluster.lab.topology import exercise

pytestmark = [pytest.mark.root]
BYTES = 102400


@pytest.fixture(scope="module")
def lab():
    store = make_store("o" + secrets.token_hex(2))
    built = up(dataclasses.replace(exercise(), offloads="real"), store=store)
    try:
        yield built
    finally:
        down(store)


def follow(lab, saved: Path, *args: str) -> dict:
    proc = run_tracer("follow", "curl", "httpbin", "--path", f"/bytes/{BYTES}", "--save", str(saved), "-o", "json",
                      *args, store=lab.store)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def frames(saved: Path, point: str) -> list[tuple[int, int]]:
    """(tcp.seq, tcp.len) of the server's data frames at a point, as tshark reads them."""
    node, iface = point.split("/")
    lines = tshark_lines(saved / node / f"{iface}.pcap", "-o", "tcp.relative_sequence_numbers:FALSE",
                         "-Y", "tcp.srcport == 80 && tcp.len > 0", "-T", "fields", "-e", "tcp.seq", "-e", "tcp.len")
    return [tuple(map(int, line.split())) for line in lines]


def ranges(pieces) -> list[tuple[int, int]]:
    """The union of (start, length) pieces of a sequence space, as sorted disjoint [start, end)."""
    out: list[list[int]] = []
    for s, n in sorted(pieces):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], s + n)
        else:
            out.append([s, s + n])
    return [tuple(r) for r in out]


def test_status_shows_the_underlay_nics_offloads(lab) -> None:
    doc = json.loads(run_tracer("lab", "status", "-o", "json", store=lab.store, check=True).stdout)
    assert doc["offloads"] == "real"
    for node in doc["nodes"]:
        nic = node["offloads"]
        assert nic["tcp-segmentation-offload"] == "off" and nic["generic-segmentation-offload"] == "off"
        assert nic["tx-udp_tnl-segmentation"] == "off" and nic["generic-receive-offload"] == "on"
    text = run_tracer("lab", "status", store=lab.store, check=True).stdout
    assert "offloads real" in text


@needs_tshark
def test_every_byte_at_every_point_though_the_pieces_differ(lab, tmp_path: Path) -> None:
    doc = follow(lab, tmp_path / "run")
    assert doc["follow"]["curl"][0]["status"] == 200 and doc["follow"]["curl"][0]["bytes"] == BYTES
    flow = next(f for f in doc["flows"] if f["http"])
    assert flow["summary"]["reached_end"] == flow["summary"]["packets"] == len(flow["packets"])
    data = [p for p in flow["packets"] if p["direction"] == "response" and p["payload_bytes"]]
    way = flow["summary"]["way"]["response"]
    sender_veth, sender_nic = way[0], next(p for p in way if p.startswith("worker2/eth"))
    seen = {point: frames(tmp_path / "run", point) for point in way}
    # the pcaps really differ: super-frames at the server's veth, the wire's frames at its NIC
    assert len(seen[sender_nic]) > 2 * len(seen[sender_veth])
    assert max(n for _, n in seen[sender_veth]) > 1500 >= max(n for _, n in seen[sender_nic])
    assert any(h["carried"] and h["carried"]["how"] == "segmented" for p in data for h in p["hops"])
    for point in way:
        ours = sum((h["carried"]["bytes"] if h["carried"] else p["payload_bytes"])
                   for p in data for h in p["hops"] if h["point"] == point)
        theirs = sum(n for _, n in seen[point])
        assert ours == theirs, point
        # and the same bytes of the sequence space: the packets' ranges there are tshark's frames' ranges
        assert ranges((p["tcp_seq"], p["payload_bytes"]) for p in data if point in {h["point"] for h in p["hops"]}) == \
            ranges(seen[point]), point
    for p in data:
        assert p["missing"] == [] and [h["point"] for h in p["hops"]] == way


def ethtool_k(ns: str, device: str) -> dict[str, str]:
    """`ethtool -k DEVICE` in a namespace, feature -> its words (`on`, `off [fixed]`)."""
    out = {}
    for line in ns_run(ns, "ethtool", "-k", device).splitlines()[1:]:
        name, _, value = line.strip().partition(": ")
        out[name] = value.strip()
    return out


def test_the_agents_record_each_points_offloads_as_ethtool_says_them(lab, tmp_path: Path) -> None:
    doc = follow(lab, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "path.json").read_text())["offloads"]
    names = {"generic-segmentation-offload": "tx-generic-segmentation", "generic-receive-offload": "rx-gro",
             "large-receive-offload": "rx-lro"}  # (ethtool -k prints these three by their old names)
    for c in doc["follow"]["captures"]:
        node, iface = c["point"].split("/")
        k = {names.get(n, n): v for n, v in ethtool_k(lab.node(node).netns, iface).items()}
        assert c["offloads"] and c["offloads"] == {n: k[n] for n in c["offloads"]}, c["point"]
        assert saved[c["point"]] == c["offloads"]
    assert saved["worker2/eth1"]["tx-tcp-segmentation"] == "off" and saved["worker1/eth1"]["rx-gro"] == "on"
    # the hop that says the bytes were cut names the settings that did it, also in analyze of the saved run
    again = json.loads(run_tracer("analyze", str(tmp_path / "run"), "-o", "json", store=lab.store, check=True).stdout)
    notes = [h["carried"]["note"] for f in again["flows"] for p in f["packets"] for h in p["hops"]
             if h["carried"] and h["point"] == "worker2/eth1"]
    assert notes and all("tx-tcp-segmentation off" in n for n in notes)


def test_a_real_drop_in_the_transfer_is_lost_with_its_retransmission(lab, tmp_path: Path) -> None:
    worker1 = lab.node("worker1").netns
    rule = ["INPUT", "-p", "udp", "--dport", "4789", "-m", "statistic", "--mode", "nth", "--every", "1000000",
            "--packet", "4", "-j", "DROP"]
    ns_run(worker1, "iptables", "-I", *rule)
    try:
        doc = follow(lab, tmp_path / "run")
    finally:
        ns_run(worker1, "iptables", "-D", *rule)
    assert doc["follow"]["curl"][0]["status"] == 200
    flow = next(f for f in doc["flows"] if f["http"])
    data = [p for p in flow["packets"] if p["direction"] == "response" and p["payload_bytes"]]
    lost = [p for p in data if p["missing"]]
    assert lost and all(p["last_seen"] == "worker1/eth1" for p in lost)  # (dropped after eth1's tap, before decap)
    assert any(p["retransmission"] and not p["missing"] for p in data)
    assert flow["summary"]["stopped"] == {"worker1/eth1": len(lost)}
    assert flow["summary"]["bytes_reached_end"] == flow["summary"]["bytes"] - sum(p["payload_bytes"] for p in lost)
