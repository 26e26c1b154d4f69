"""Node clocks that disagree: shift every capture of worker2 (and of httpbin, a pod on worker2) by
+-2 s with editcap and check that tracer still orders every packet's hops by the way, and that it
measures the shift as worker2's clock offset.
"""

from __future__ import annotations

import re
import shutil

import pytest

from factories import SAMPLES, analyze_json, editcap, needs_editcap, run_cli

SHIFTED_NODES = ("worker2", "httpbin")


def hop_order(doc: dict) -> list[list[str]]:
    return [[h["point"] for h in p["hops"]] for f in doc["flows"] for p in f["packets"]]


def shifted_copy(tmp_path, scenario: str, seconds: float):
    dst = tmp_path / scenario
    shutil.copytree(SAMPLES / scenario, dst)
    for node in SHIFTED_NODES:
        for f in sorted((dst / node).glob("*.pcap")):
            out = f.with_suffix(".shifted")
            editcap("-t", str(seconds), f, out)
            out.replace(f)
    return dst


@needs_editcap
@pytest.mark.parametrize("scenario", ["http-get", "clusterip-dnat", "vxlan-drop"])
@pytest.mark.parametrize("seconds", [2.0, -2.0])
def test_hop_order_survives_a_shifted_clock(tmp_path, capsys, scenario, seconds):
    original = analyze_json(capsys, str(SAMPLES / scenario))
    shifted_dir = shifted_copy(tmp_path, scenario, seconds)
    shifted = analyze_json(capsys, str(shifted_dir))
    assert hop_order(shifted) == hop_order(original)
    assert len(hop_order(shifted)) == {"http-get": 12, "clusterip-dnat": 12, "vxlan-drop": 2}[scenario]
    # the same view in every other respect too: what was missing is still missing
    assert [p["missing"] for f in shifted["flows"] for p in f["packets"]] == \
           [p["missing"] for f in original["flows"] for p in f["packets"]]
    offsets = shifted["clock_offsets"]
    assert shifted["reference_node"] == "worker1"
    assert offsets["worker2"] == pytest.approx(seconds, abs=0.005)
    if scenario != "vxlan-drop":  # nothing reached httpbin there
        assert offsets["httpbin"] == pytest.approx(seconds, abs=0.005)
    # hop offsets are corrected: every packet crosses the lab in well under 10 ms
    for f in shifted["flows"]:
        for p in f["packets"]:
            assert all(0 <= h["offset"] < 0.01 for h in p["hops"]), [h["offset"] for h in p["hops"]]


@needs_editcap
def test_shift_changes_raw_timestamps_only(tmp_path, capsys):
    """The test above must be able to fail: the shift really is in the files tracer reads."""
    shifted = analyze_json(capsys, str(shifted_copy(tmp_path, "http-get", 2.0)))
    syn = shifted["flows"][0]["packets"][0]
    times = {h["point"]: h["time"] for h in syn["hops"]}
    assert times["worker2/eth1"] - times["worker1/eth1"] == pytest.approx(2.0, abs=0.005)


@pytest.mark.parametrize("scenario", ["http-get", "vxlan-drop", "any-http-get"])
def test_one_clock_gets_no_made_up_offset(capsys, scenario):
    # The lab's namespaces share one kernel clock, and every hop is in order by it: no offset is
    # estimated (one-way times differ; a midpoint would turn that into offsets of some µs and
    # show a veth crossing as 0 µs), so each hop's time is its capture's own.
    doc = analyze_json(capsys, str(SAMPLES / scenario))
    assert doc["clock_offsets"] and set(doc["clock_offsets"].values()) == {0.0}
    for f in doc["flows"]:
        for p in f["packets"]:
            t0 = p["hops"][0]["time"]
            assert [h["offset"] for h in p["hops"]] == [pytest.approx(h["time"] - t0, abs=1e-9) for h in p["hops"]]
            assert all(b["offset"] >= a["offset"] for a, b in zip(p["hops"], p["hops"][1:]))  # (µs pcaps tie)


@needs_editcap
def test_the_text_view_says_which_clocks_were_corrected(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "analyze", str(SAMPLES / "http-get"))
    assert "clocks: every hop in order by its capture's clock (no offsets between nodes to correct)" in out
    code, out, _ = run_cli(capsys, "analyze", str(shifted_copy(tmp_path, "http-get", 2.0)))
    m = re.search(r"clock offsets against worker1 \(estimated from the traffic\): worker2 ([+-][0-9.]+)s", out)
    assert m and float(m.group(1)) == pytest.approx(2.0, abs=0.005)
