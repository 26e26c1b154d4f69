"""Captures that did not all run over the same span, as hand-started tcpdumps on several nodes
are: what one node's capture missed because it was not running yet (or any more) is told apart
from a packet lost on the way, and the packets of a flow stay in the order they were sent.

The files are the real sample captures of pcaps/http-get, cut with editcap (keep records N-M),
as if worker2's (or worker1's) tcpdumps had been started later (or stopped sooner).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from factories import SAMPLES, analyze_json, needs_editcap, run_cli
from tracer.analysis import AnalyzeRequest, correlate

pytestmark = needs_editcap

LATE_POINTS = ["worker2/eth1", "worker2/vxlan.calico", "worker2/cali4a3c027cd7f", "httpbin/eth0"]


def keep_records(path: Path, first: int, last: int | None = None) -> None:
    """Keep records first..last (1-based) of a capture file, in place, with editcap."""
    out = path.with_suffix(".cut")
    subprocess.run(["editcap", "-r", str(path), str(out), f"{first}-{last or 10**9}"], check=True)
    out.replace(path)


@pytest.fixture
def late_worker2(tmp_path) -> Path:
    """pcaps/http-get with worker2's and httpbin's captures begun after the first three packets
    (SYN, SYN-ACK, ACK) had gone by."""
    d = tmp_path / "late"
    shutil.copytree(SAMPLES / "http-get", d)
    for f in [*(d / "worker2").glob("*.pcap"), *(d / "httpbin").glob("*.pcap")]:
        keep_records(f, 4)
    return d


def test_packets_stay_in_the_order_they_were_sent(late_worker2, capsys):
    # The packets that missed points are finalized only when their window runs out, after the
    # others: they were listed last (the SYN as packet 10 of 12).
    packets = analyze_json(capsys, str(late_worker2))["flows"][0]["packets"]
    assert [p["tcp_flags"] for p in packets[:3]] == ["S", "SA", "A"]
    starts = [p["hops"][0]["time"] for p in packets]  # (one kernel clock: no offsets)
    assert starts == sorted(starts)


def test_a_node_not_capturing_yet_is_not_called_a_loss(late_worker2, capsys):
    doc = analyze_json(capsys, str(late_worker2))
    syn = doc["flows"][0]["packets"][0]
    assert syn["tcp_flags"] == "S" and syn["last_seen"] == "worker1/eth1"
    assert syn["missing"] == LATE_POINTS  # (the contract: the points that did not see it)
    assert syn["not_captured"] == LATE_POINTS  # ... none of which was capturing then
    assert all(p["not_captured"] == [] for p in doc["flows"][0]["packets"][3:])  # worker2 capturing by then
    assert any("worker2" in w and "captured nothing" in w and "begin" in w for w in doc["warnings"]), doc["warnings"]

    summary = analyze_json(capsys, str(late_worker2), "--summary")["flows"][0]["summary"]
    assert summary["stopped"] == {"worker1/eth1": 2}  # SYN and ACK, requests (the SYN-ACK's way starts later)
    assert summary["not_captured"] == 2

    code, out, _ = run_cli(capsys, "analyze", str(late_worker2))
    assert code == 0
    first = out.split("packet 2:")[0]
    assert first.count("not capturing then") == 4 and "not seen here" not in first
    assert "lost, or gone on unseen" in " ".join(first.split())  # (the note wraps at the table's width)


def test_a_capture_ended_sooner_is_told_too(tmp_path, capsys):
    d = tmp_path / "early-end"
    shutil.copytree(SAMPLES / "http-get", d)
    for f in [*(d / "worker1").glob("*.pcap"), *(d / "curl").glob("*.pcap")]:
        keep_records(f, 1, 9)  # worker1's and curl's captures stopped before the last three packets
    doc = analyze_json(capsys, str(d))
    unseen = [p for p in doc["flows"][0]["packets"] if p["not_captured"]]
    # httpbin's FIN-ACK crossed worker2 after worker1's captures had ended
    assert [(p["tcp_flags"], p["direction"], p["last_seen"]) for p in unseen] == [("FA", "response", "worker2/eth1")]
    back = ["worker1/eth1", "worker1/vxlan.calico", "worker1/cali35e3a5cb80b", "curl/eth0"]
    assert unseen[0]["missing"] == unseen[0]["not_captured"] == back
    assert any("worker1" in w and "end" in w and "before the last" in w for w in doc["warnings"]), doc["warnings"]


def test_a_real_drop_stays_a_drop(capsys):
    # pcaps/vxlan-drop: worker2's NIC saw the SYNs, an iptables rule dropped them after it; the
    # node was capturing, so the points after the NIC missed them for real.
    doc = analyze_json(capsys, str(SAMPLES / "vxlan-drop"))
    for p in doc["flows"][0]["packets"]:
        assert p["missing"] and p["not_captured"] == []
    assert not any("captured nothing" in w for w in doc["warnings"])


def test_follow_says_its_captures_ran_together(late_worker2):
    # tracer follow's agents all listen before curl and until the exchange ends: a point that did
    # not see a packet means the packet was not there, whenever that point's first frame came.
    trace, _ = correlate(AnalyzeRequest(paths=(str(late_worker2),), captured_together=True))
    syn = trace.flows[0].packets[0]
    assert syn.missing == tuple(LATE_POINTS) and syn.not_captured == ()
    assert trace.flows[0].summary.not_captured == 0
