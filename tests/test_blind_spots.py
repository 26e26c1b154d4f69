"""Points a data path may carry packets past unseen (issue: blind spots are not losses), and
`--point` for a way tracer does not know, on real kernel captures of the lab.

A node whose eBPF puts the packets from the tunnel straight into the pod (Cilium's BPF host
routing, bpf_redirect_peer; Calico eBPF's BPFRedirectToPeer) gives a capture on the pod's host
veth only what the pod sends: the lab's follow captures, with every frame into a pod taken out of
its veth's pcap, are what such a node's capture holds. Marked in path.json (`bypass`), those
packets are "not visible" there, reach their end, and nothing is lost; unmarked, the same
captures say they stopped (the test that the marks do something)."""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_store, run_tracer, store_env
from tracer.cluster.lab import Lab, down, exercise, up
from tracer.cluster.lab.topology import CALICO_BGP

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.mark.parametrize(("seen", "invisible"), [
    ((0, 1, 2, 3, 4), (5,)),  # to the last non-blind point: the blind end went by unseen
    ((1, 2, 3, 4, 5), ()),  # the blind start: before its first sighting, nothing to say
    ((0, 1, 2), ()),  # stopped on the first node: lost before the blind end, not "not visible"
    ((0, 1, 2, 3, 4, 5), ()),
])
def test_a_blind_point_is_not_visible_only_where_the_packet_went_by(seen, invisible) -> None:
    from tracer.correlate.ways import mask_info, visible_way

    way, blind = (0, 1, 2, 3, 4, 5), frozenset({0, 5})
    mask = sum(1 << p for p in seen)
    assert visible_way(way, mask, blind)[1] == invisible
    pts = [type("P", (), {"id": f"p{i}"})() for i in way]
    _, got_there, stopped_at, *_, unseen = mask_info(pts, mask, way, blind)
    assert unseen == bool(invisible)
    assert got_there == (seen[-1] >= 4 and (seen[-1] == 5 or bool(invisible)))
    assert stopped_at == (None if got_there else f"p{seen[-1]}")


def keep_frames(pcap: Path, keep) -> int:
    """Rewrite a pcap (any magic, Ethernet) with the records whose frame `keep` takes; how many went."""
    data = pcap.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, at, dropped = bytearray(data[:24]), 24, 0
    while at + 16 <= len(data):
        incl = struct.unpack(order + "I", data[at + 8:at + 12])[0]
        record = data[at:at + 16 + incl]
        if keep(record[16:]):
            out += record
        else:
            dropped += 1
        at += 16 + incl
    pcap.write_bytes(bytes(out))
    return dropped


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


@pytest.fixture(scope="module")
def bypassed_run(lab: Lab, tmp_path_factory) -> Path:
    """A follow of the lab, as a node with redirect-to-peer would have captured it at the pods' veths."""
    run = tmp_path_factory.mktemp("bypass") / "run"
    run_tracer("follow", "curl", "httpbin", "--save", str(run), store=lab.store, check=True)
    for pod in (lab.pod("curl"), lab.pod("httpbin")):
        pcap = next(run.glob(f"*/{pod.host_veth}.pcap"))
        # (what the node sends into the pod never passes the host side of its veth)
        assert keep_frames(pcap, lambda frame, m=mac(pod.mac): frame[:6] != m) > 0, pod.name
    return run


def analyze_json(run: Path, lab: Lab) -> dict:
    return json.loads(run_tracer("analyze", str(run), "-o", "json", store=lab.store, check=True).stdout)


def mark(run: Path, lab: Lab, marked: bool) -> None:
    doc = json.loads((run / "path.json").read_text())
    veths = {lab.pod("curl").host_veth, lab.pod("httpbin").host_veth}
    for p in doc["points"]:
        p["bypass"] = "redirect-to-peer (the test's)" if marked and p["interface"] in veths else ""
    (run / "path.json").write_text(json.dumps(doc))


def test_unmarked_the_packets_into_the_pods_look_lost(bypassed_run: Path, lab: Lab) -> None:
    mark(bypassed_run, lab, marked=False)
    flow = next(f for f in analyze_json(bypassed_run, lab)["flows"] if f["protocol"] == "tcp")
    syn = next(p for p in flow["packets"] if p["tcp_flags"] == "S")
    assert syn["missing"] == [f"worker2/{lab.pod('httpbin').host_veth}"] and syn["not_visible"] == []
    assert flow["summary"]["reached_end"] < flow["summary"]["packets"]


def test_marked_they_are_not_visible_there_and_nothing_is_lost(bypassed_run: Path, lab: Lab) -> None:
    mark(bypassed_run, lab, marked=True)
    doc = analyze_json(bypassed_run, lab)
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    curl_veth, httpbin_veth = (f"worker{n}/{lab.pod(p).host_veth}" for n, p in ((1, "curl"), (2, "httpbin")))
    for p in flow["packets"]:
        assert p["missing"] == [] and p["gaps"] == [], p["summary"]
        assert p["not_visible"] == [httpbin_veth if p["direction"] == "request" else curl_veth], p["summary"]
        assert p["hops"][0]["point"] == (curl_veth if p["direction"] == "request" else httpbin_veth)
    s = flow["summary"]
    assert s["reached_end"] == s["packets"] == s["not_visible"] == len(flow["packets"])
    assert s["stopped"] == {}
    summary = json.loads(run_tracer("analyze", str(bypassed_run), "--summary", "-o", "json", store=lab.store,
                                    check=True).stdout)["summary"]
    assert summary["segments"] and all(seg["lost"] == 0 for seg in summary["segments"])
    grid = run_tracer("analyze", str(bypassed_run), store=lab.store, check=True).stdout
    assert "◌ not visible there (a point its data path may bypass)" in grid
    assert f"◌ not visible at {httpbin_veth}: its data path may carry packets past there unseen" in grid
    assert "stopped after" not in grid
    hops = run_tracer("analyze", str(bypassed_run), "--view", "hops", store=lab.store, check=True).stdout
    assert "not visible here (its data path may bypass it)" in hops and "not seen here" not in hops


# --- --point on a way tracer does not know --------------------------------------------------------

UNKNOWN_ROUTED = ("import sys, tracer.cluster.discover as d; "
                  "d.DATA_PATHS = tuple(p for p in d.DATA_PATHS if not p.endswith('.routed')); "
                  "from tracer.cli import main; sys.argv[0] = 'tracer'; main()")
"""The CLI with the routed data path unregistered: Calico BGP's way is then one tracer does not know."""


@pytest.fixture(scope="module")
def bgp_lab() -> Iterator[Lab]:
    store = make_store("pt" + secrets.token_hex(2))
    built = up(exercise(2, CALICO_BGP), store=store)
    try:
        yield built
    finally:
        down(store)


def unknowing(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", UNKNOWN_ROUTED, *args], capture_output=True, text=True,
                          env=store_env(lab.store), timeout=120)


def test_a_way_tracer_does_not_know_is_followed_on_the_points_named(bgp_lab: Lab) -> None:
    refused = unknowing(bgp_lab, "follow", "curl", "httpbin")
    assert refused.returncode == 6, refused.stderr
    assert "not a way tracer knows" in refused.stderr and "--point NODE/IFACE" in refused.stderr
    proc = unknowing(bgp_lab, "follow", "curl", "httpbin", "--point", "worker1/eth1", "--point", "worker2/eth1",
                     "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["follow"]["curl"][0]["status"] == 200
    curl, httpbin = bgp_lab.pod("curl"), bgp_lab.pod("httpbin")
    way = [f"worker1/{curl.host_veth}", "worker1/eth1", "worker2/eth1", f"worker2/{httpbin.host_veth}"]
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    for p in flow["packets"]:
        assert [h["point"] for h in p["hops"]] == (way if p["direction"] == "request" else way[::-1]), p["summary"]
        assert p["missing"] == []
    syn = next(p for p in flow["packets"] if p["tcp_flags"] == "S")
    assert [h["ttl"] for h in syn["hops"]] == [64, 63, 63, 62]
    text = unknowing(bgp_lab, "follow", "curl", "httpbin", "--point", "worker1/eth1", "--point", "worker2/eth1")
    assert text.returncode == 0, text.stderr
    assert "not a way tracer knows: capturing on worker1/eth1, worker2/eth1 as --point asked" in text.stdout
    path = json.loads(unknowing(bgp_lab, "path", "curl", "httpbin", "--point", "worker1/eth1", "-o", "json").stdout)
    assert path["data_path"] == "unknown" and path["tunnel"]["encapsulation"] == "unknown"
    assert [(p["id"], p["asked"]) for p in path["points"]] == [
        (way[0], False), ("worker1/eth1", True), (way[3], False)]
