"""`tracer analyze --pcapng FILE`: one merged pcapng that Wireshark/tshark open, one interface per
capture point named `node/interface`, every frame commented with its flow, packet and hop.
Checked with tshark (the independent reader) against the JSON view of the same run.
"""

from __future__ import annotations

import re

import pytest

from factories import SAMPLES, analyze_json, needs_tshark, run_cli, sample_files, tshark_lines
from tracer.capture.pcapio import open_capture

pytestmark = [pytest.mark.tshark, needs_tshark]

COMMENT = re.compile(r"^flow (\d+) packet (\d+) hop (\d+)/(\d+) (.+)$")


def merged(tmp_path, capsys, scenario: str):
    out = tmp_path / f"{scenario}.pcapng"
    doc = analyze_json(capsys, str(SAMPLES / scenario), "--pcapng", str(out))
    rows = [line.split("\t") for line in tshark_lines(out, "-T", "fields", "-e", "frame.interface_name",
                                                      "-e", "frame.comment", "-e", "frame.time_epoch")]
    return out, doc, rows


@pytest.mark.parametrize("scenario,frames", [("http-get", 96), ("clusterip-dnat", 96), ("vxlan-drop", 10)])
def test_merged_file_names_points_and_comments_hops(tmp_path, capsys, scenario, frames):
    out, doc, rows = merged(tmp_path, capsys, scenario)
    assert len(rows) == frames  # every sighting of every packet
    points = {p["id"] for p in doc["points"] if p["packets"]}
    assert {iface for iface, _, _ in rows} == points
    packets = doc["flows"][0]["packets"]
    seen = set()
    for iface, comment, _ in rows:
        m = COMMENT.match(comment)
        assert m, comment
        flow, packet, hop, total = map(int, m.groups()[:4])
        assert flow == 1
        p = packets[packet - 1]
        assert total == len(p["hops"])
        h = p["hops"][hop - 1]
        assert h["point"] == iface, comment  # the comment's hop is the frame's interface
        # ... and it describes that frame as it is there (its own addresses, NAT-ed or not), its
        # TTL and what happened at that hop, as the JSON's hop has it
        src, dst = (f"{h['ip_src']}:{h['sport']}", f"{h['ip_dst']}:{h['dport']}")
        assert f" {src} -> {dst}" in m.group(5) and f", TTL {h['ttl']}" in m.group(5), comment
        assert m.group(5).split(": ", 1)[1].startswith(h["why"]), comment
        assert (", encapsulated VXLAN VNI 4096:" in comment) == iface.endswith("/eth1"), comment
        if hop == total and p["missing"]:
            assert comment.endswith(f"further (next: {p['missing'][0]})"), comment
        seen.add((packet, hop))
    assert seen == {(pi, hi) for pi, p in enumerate(packets, 1) for hi in range(1, len(p["hops"]) + 1)}


def test_merged_file_interfaces_and_frames_are_the_originals(tmp_path, capsys):
    """One interface per point, Ethernet, named node/interface; frames and timestamps kept byte for byte."""
    out, doc, rows = merged(tmp_path, capsys, "http-get")
    cap, records = open_capture(out)
    recs = list(records)
    names = [i.name for i in cap.interfaces]
    assert sorted(names) == sorted(p["id"] for p in doc["points"])
    assert all(i.linktype == 1 for i in cap.interfaces)
    originals = {}
    for f in sample_files(SAMPLES / "http-get"):
        ocap, orecs = open_capture(f)
        originals[f"{f.parent.name}/{f.stem}"] = {r.data: r.time for r in orecs}
    for r in recs:
        point = names[r.interface]
        assert r.data in originals[point], point
        assert r.time == pytest.approx(originals[point][r.data], abs=1e-6)
    # tshark sees the same time order (the writer sorts by time)
    times = [float(t) for _, _, t in rows]
    assert times == sorted(times)


def test_unwritable_pcapng_path_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--pcapng", str(tmp_path / "no" / "x.pcapng"))
    assert code == 3 and err.startswith("tracer: ") and "hint:" in err and "Traceback" not in err


def test_summary_with_pcapng_writes_every_hop_too(tmp_path, capsys):
    full = tmp_path / "full.pcapng"
    summary = tmp_path / "summary.pcapng"
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--pcapng", str(full))
    assert code == 0, err
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--summary", "--pcapng", str(summary))
    assert code == 0
    assert f"tracer: wrote {summary}: 96 frames of 8 points" in err
    fields = ("-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment")
    assert tshark_lines(summary, *fields) == tshark_lines(full, *fields) and len(tshark_lines(full, *fields)) == 96
    # the frames themselves too: the same bytes at the same times on the same interfaces
    frames = [[(r.interface, r.time, r.data) for r in open_capture(f)[1]] for f in (summary, full)]
    assert frames[0] == frames[1]
