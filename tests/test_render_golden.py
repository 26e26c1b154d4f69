"""Golden tests of the terminal views: render into a 100-column colourless Console and compare
with the text files in tests/golden/. After an intended change of a view, regenerate them with

    TRACER_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_render_golden.py

and review the diff of tests/golden/ like code.
"""

from __future__ import annotations

import os
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from factories import SAMPLES
from tracer.render import hops
from tracer.render import grid
from tracer.render import summary as summary_view
from tracer.render.text import safe
from tracer.app.analyze import AnalyzeRequest, correlate, select_flows
from tracer.app.analyze import read_path_file

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TRACER_UPDATE_GOLDEN") == "1"


def view(scenario: str, kind: str, width: int = 100) -> str:
    """What `tracer analyze pcaps/<scenario> [--summary]` shows, at 100 columns without colour."""
    way, names, *_ = read_path_file(str(SAMPLES / scenario / "path.json"))
    # paths relative to the repository, so the text does not depend on where it is checked out
    req = AnalyzeRequest(paths=(os.path.relpath(SAMPLES / scenario),), way=way, names=names,
                         summary=kind == "summary")
    trace, _ = correlate(req)
    shown = select_flows(trace, (), False)
    out = StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, soft_wrap=False)
    if kind == "summary":
        summary_view.render_summary(trace, console, shown)
    elif kind == "grid":
        grid.render_grid(trace, console, shown, names)
    else:
        hops.render_hops(trace, console, shown, names)
    return out.getvalue()


@pytest.mark.parametrize("scenario", ["http-get", "vxlan-drop", "clusterip-dnat"])
@pytest.mark.parametrize("width", [80, 100])
def test_grid_matches_golden(scenario, width, monkeypatch):
    """The class's grid, at a projector's 80 columns and at 100."""
    monkeypatch.chdir(SAMPLES.parent)
    text = view(scenario, "grid", width)
    golden = GOLDEN / f"{scenario}.grid.{width}.txt"
    if UPDATE:
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no {golden.name}: run with TRACER_UPDATE_GOLDEN=1 to write it"
    assert text == golden.read_text(encoding="utf-8")


def test_grid_marks_a_drop_a_retransmission_and_its_interval():
    text = view("vxlan-drop", "grid", 200)
    rows = [line for line in text.splitlines() if "SYN" in line and line.strip()[:1].isdigit()]
    assert len(rows) == 2 and "(again)" in rows[1] and "1.028s" in rows[1]
    for row in rows:  # worker2/eth1 saw it, its vxlan.calico did not: the ✗ is there, the rest not on its way
        cells = [c.strip() for c in row.split("│")]
        assert cells[3:] == ["● 64", "● 64", "M 63", "⊕4096 63", "● 63", "✗", "·", "·"]
    # (the ○ of a point passed uncaptured: tests/test_analyze_samples.py's gap case)


@pytest.mark.parametrize("scenario,kind", [
    ("http-get", "hops"),
    ("http-get", "summary"),
    ("vxlan-drop", "hops"),
    ("vxlan-drop", "summary"),
    ("clusterip-dnat", "hops"),
])
def test_view_matches_golden(scenario, kind, monkeypatch):
    monkeypatch.chdir(SAMPLES.parent)
    text = view(scenario, kind)
    golden = GOLDEN / f"{scenario}.{kind}.txt"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no {golden.name}: run with TRACER_UPDATE_GOLDEN=1 to write it"
    assert text == golden.read_text(encoding="utf-8")


def test_golden_files_hold_the_lab_facts():
    """The goldens themselves were reviewed: they show the facts of the way, not just any text."""
    hops = (GOLDEN / "http-get.hops.txt").read_text(encoding="utf-8")
    for fact in ("curl/eth0", "worker1/cali35e3a5cb80b", "worker2/eth1", "httpbin/eth0", "66:ca:11:c0:00:01",
                 "VXLAN encapsulated VNI 4096", "+50 bytes", "(curl)", "(httpbin)"):
        assert fact in hops, fact
    assert "not seen here" in (GOLDEN / "vxlan-drop.hops.txt").read_text(encoding="utf-8")
    assert "DNAT (kube-proxy): destination 10.152.183.50:80 -> 172.18.104.14:80" in (GOLDEN / "clusterip-dnat.hops.txt").read_text(encoding="utf-8")
    assert all(len(line) <= 100 for g in GOLDEN.glob("*.txt") for line in g.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("scenario", ["http-get", "vxlan-drop", "clusterip-dnat"])
def test_hop_view_fits_100_columns(scenario, monkeypatch):
    """A hop fits 100 columns: if the table were too wide, rich would squeeze it (the '#' column
    vanishes, so the notes refer to hop numbers no longer shown; 'out' becomes 'o…')."""
    monkeypatch.chdir(SAMPLES.parent)
    text = view(scenario, "hops")
    assert "…" not in text
    # hop rows (not the footer's point table, whose rows have "│"): they start with the hop number
    rows = [line for line in text.splitlines() if "/eth1 " in line and "│" not in line and "not seen" not in line]
    assert rows and all(line.split()[0].isdigit() for line in rows), rows[:2]
    assert all(line.split()[2] in ("in", "out") for line in rows), rows[:2]


def test_untrusted_names_are_escaped():
    """Control characters in names (a pod named by someone else) never reach the terminal raw."""
    assert safe("evil\x1b[2Jpod\n") == "evil\\x1b[2Jpod\\x0a"


@pytest.mark.parametrize("width", [80, 90])
@pytest.mark.parametrize("scenario,kind", [("http-get", "hops"), ("vxlan-drop", "hops"), ("vxlan-drop", "summary")])
def test_a_default_terminal_cuts_nothing(scenario, kind, width, monkeypatch):
    # 80 columns (a default terminal, a projector's big font): every TTL, MAC, address and point
    # name is there in full, none cut to "…"; only the lines are more.
    monkeypatch.chdir(SAMPLES.parent)
    text = view(scenario, kind, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    if kind != "hops":
        return  # (the summary's tables fold long names over lines instead)
    wide = view(scenario, kind)
    # (a point's node over its interface there: each name whole, none folded)
    for word in ("TTL", "dir", "64", "63", "62", "ee:ee:ee:ee:ee:ee", "VXLAN 4096", "172.18.104.14", "worker2/",
                 "eth0", "eth1", "cali35e3a5cb80b", "cali4a3c027cd7f", "vxlan.calico", "outer MAC", "outer IP"):
        assert text.count(word) == wide.count(word), word
    # each outer header's label stands on the line of its first address
    lines = text.splitlines()
    assert all(ln.split()[0].startswith("52:54:00:00:56:") for ln in lines if "outer MAC" in ln)  # the NICs
    # ... and the outer TTL on the outer IP's line, before it (the TTL column)
    assert all(ln.split()[0] == "64" and ln.split()[1].startswith("192.168.56.") for ln in lines if "outer IP" in ln)


def _styled_cells(console: Console, renderable) -> list[tuple[str, object]]:
    """What the terminal gets, character by character with its style (segment cuts aside)."""
    return [(ch, seg.style or None) for seg in console.render(renderable) for ch in seg.text]


@pytest.mark.parametrize("scenario", ["http-get", "vxlan-drop", "clusterip-dnat", "any-http-get"])
def test_direct_layout_is_what_rich_lays_out(scenario):
    """hops.lay_out (the hop tables without rich's general table layout, ~10 ms less a table)
    gives every character and its style as rich's Table does; at 100 columns and wider it is
    the one used (the goldens are its text), narrower it steps aside where rich would fold."""
    way, names, *_ = read_path_file(str(SAMPLES / scenario / "path.json"))
    trace, _ = correlate(AnalyzeRequest(paths=(str(SAMPLES / scenario),), way=way, names=names))
    packets = [p for f in select_flows(trace, (), False) for p in f.packets]
    assert packets
    for width in (60, 80, 90, 100, 160):
        console = Console(file=StringIO(), width=width, force_terminal=True, color_system="truecolor")
        used = 0
        for i, p in enumerate(packets, 1):
            table = hops.packet_table(p, i, names, narrow=width < hops.NARROW)
            direct = hops.lay_out(table, console)
            if direct is None:
                continue
            used += 1
            assert _styled_cells(console, direct) == _styled_cells(console, table), (width, i)
        if width >= hops.NARROW:
            assert used == len(packets), width
        if width == 60:
            assert used == 0  # too narrow for the hop tables as they are: rich folds them


def test_only_what_changed_at_a_hop_is_highlighted():
    """At worker1/vxlan.calico the MACs and the TTL change, the addresses do not: the L3 line is
    left plain (a Text's base style once coloured it with the MAC line)."""
    way, names, *_ = read_path_file(str(SAMPLES / "http-get" / "path.json"))
    trace, _ = correlate(AnalyzeRequest(paths=(str(SAMPLES / "http-get"),), way=way, names=names))
    p = trace.flows[0].packets[0]
    hop = next(i for i, h in enumerate(p.hops) if h.point == "worker1/vxlan.calico")
    assert set(p.hops[hop].changes) == {"mac", "ttl"}
    table = hops.packet_table(p, 1, names)
    addr = table.columns[5]._cells[hop]
    mac_line, ip_line = addr.plain.split("\n")[:2]
    styled = {addr.plain[s.start:s.end] for s in addr.spans if s.style == hops.CHANGE_STYLE}
    assert mac_line in styled and ip_line not in styled and not addr.style
