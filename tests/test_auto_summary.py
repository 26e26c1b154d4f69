"""The text view of big captures is the summary (as the issue asks), worked out as --summary
works it out when the captures are big, and the hops whenever flows are chosen."""

from __future__ import annotations

from factories import SAMPLES, analyze_json, run_cli
from tracer.app import analyze as analyze_app

HTTP_GET = str(SAMPLES / "http-get")


def frames_and_http_packets(capsys) -> tuple[int, int]:
    d = analyze_json(capsys, HTTP_GET, "--summary")
    return d["summary"]["frames"], sum(f["summary"]["packets"] for f in d["flows"] if f["http"])


def test_big_captures_are_summarized_from_the_start(capsys, monkeypatch):
    monkeypatch.setattr(analyze_app, "AUTO_SUMMARY_BYTES", 1)
    kept = []
    correlate = analyze_app.correlate
    monkeypatch.setattr(analyze_app, "correlate", lambda req: kept.append(c := correlate(req)) or c)
    frames, packets = frames_and_http_packets(capsys)
    kept.clear()
    code, out, err = run_cli(capsys, "analyze", HTTP_GET)
    assert code == 0, err
    note, rest = out.split("\n", 1)
    assert note == (f"{frames} frames in the captures, {packets} packets in the selected flows: showing the summary"
                    " (--flow N for one flow's hops)")
    assert [c.options.keep_packets for _, c in kept] == [False]
    code, summary, err = run_cli(capsys, "analyze", HTTP_GET, "--summary")
    assert rest == summary


def test_chosen_flows_of_big_captures_show_their_hops(capsys, monkeypatch):
    code, small, err = run_cli(capsys, "analyze", HTTP_GET, "--flow", "1")
    monkeypatch.setattr(analyze_app, "AUTO_SUMMARY_BYTES", 1)
    code, out, err = run_cli(capsys, "analyze", HTTP_GET, "--flow", "1")
    assert code == 0, err
    assert out == small and "⊕4096" in out  # (the grid of its packets, as for small captures)
    code, hops_small, err = run_cli(capsys, "analyze", HTTP_GET, "--flow", "1", "--view", "hops")
    assert "VXLAN encapsulated" in hops_small


def test_small_captures_with_many_packets_are_summarized_too(capsys, monkeypatch):
    monkeypatch.setattr(analyze_app, "AUTO_SUMMARY_PACKETS", 5)
    _, packets = frames_and_http_packets(capsys)
    code, out, err = run_cli(capsys, "analyze", HTTP_GET)
    assert code == 0, err
    assert out.startswith(f"{packets} packets in the selected flows: showing the summary")
