"""Captures that did not all run over the same span, as hand-started tcpdumps on several nodes
are: a packet that missed a node while that node had captured nothing yet (or nothing more)
is still missing there, but marked so (it may have gone by a capture not yet running), and the
packets of a flow stay in the order they were sent.

The files are the real sample captures of pcaps/http-get, cut with editcap (keep records N-M),
as if worker2's (or worker1's) tcpdumps had been started later (or stopped sooner).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from factories import SAMPLES, analyze_json, editcap, needs_editcap, run_cli
from tracer.app.analyze import AnalyzeRequest, correlate

pytestmark = needs_editcap

LATE_POINTS = ["worker2/eth1", "worker2/vxlan.calico", "worker2/cali4a3c027cd7f", "httpbin/eth0"]


def keep_records(path: Path, first: int, last: int | None = None) -> None:
    """Keep records first..last (1-based) of a capture file, in place, with editcap."""
    out = path.with_suffix(".cut")
    editcap("-r", path, out, f"{first}-{last or 10**9}")
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


def test_a_node_not_capturing_yet_is_marked(late_worker2, capsys):
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

    code, out, _ = run_cli(capsys, "analyze", str(late_worker2), "--view", "hops")
    assert code == 0
    first = " ".join(out.split("packet 2:")[0].split())  # (the notes wrap at the table's width)
    assert first.count("not seen here (nothing captured then)") == 4  # still missing, and why it may be
    assert "✗ stopped after worker1/eth1" in first and "may have gone on unseen" in first


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


def test_a_saved_follow_says_so_to_analyze(late_worker2, capsys):
    # tracer follow --save writes "captured_together" into the path.json beside its captures.
    doc = json.loads((late_worker2 / "path.json").read_text())
    (late_worker2 / "path.json").write_text(json.dumps({**doc, "captured_together": True}))
    syn = analyze_json(capsys, str(late_worker2))["flows"][0]["packets"][0]
    assert syn["missing"] == LATE_POINTS and syn["not_captured"] == []


@pytest.mark.parametrize("shift", ["-0.001"])
def test_the_windows_are_judged_on_corrected_clocks(late_worker2, capsys, shift):
    # worker2's (and httpbin's) clock 1 ms behind as well: on raw clocks its late start would
    # look as if it came before the SYN; on the clocks corrected with the estimated offsets it is
    # what it was. (A shift longer than the ~2 ms exchange would leave the SYN outside either way:
    # no test of the correction.)
    for f in [*(late_worker2 / "worker2").glob("*.pcap"), *(late_worker2 / "httpbin").glob("*.pcap")]:
        out = f.with_suffix(".shifted")
        editcap("-t", shift, f, out)
        out.replace(f)
    doc = analyze_json(capsys, str(late_worker2))
    packets = doc["flows"][0]["packets"]
    assert [p["tcp_flags"] for p in packets[:3]] == ["S", "SA", "A"]
    assert packets[0]["not_captured"] == LATE_POINTS
    assert all(p["not_captured"] == [] for p in packets[3:])
