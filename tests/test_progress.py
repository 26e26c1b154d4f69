"""Progress while reading big captures: the share read, told as reading goes, by every reader
(in-process fast reader, worker processes, the full decoder), and its line on a terminal."""

from __future__ import annotations

import io
import json
import shutil

import pytest

from factories import SAMPLES, run_cli, wait_for
from tracer.capture import fastpath
from tracer.correlate import engine
from tracer.capture.inputs import inputs_from_paths
from tracer.correlate.engine import CorrelationOptions, Correlator
from tracer.render import progress as progress_line


@pytest.mark.parametrize("scenario,jobs,summary", [
    ("http-get", 1, True),          # the fast reader, here
    ("http-get", 8, True),          # the fast reader, in workers
    ("http-get", 1, False),         # the full decoder (every packet kept)
    ("any-http-get", 1, True),      # tcpdump -i any: Linux cooked frames, the full decoder
])
def test_the_share_read_grows_to_all(monkeypatch, scenario, jobs, summary):
    monkeypatch.setattr(fastpath, "CHUNK", 512)       # many batches from small files
    monkeypatch.setattr(engine, "PROGRESS_EVERY", 0)  # told after each
    told: list[float] = []
    inputs = inputs_from_paths([str(SAMPLES / scenario)])
    Correlator(inputs, CorrelationOptions(keep_packets=not summary, jobs=jobs), told.append).run()
    assert told[-1] == 1.0
    assert told == sorted(told) and all(0 <= x <= 1 for x in told)
    if summary and scenario == "http-get":  # (the full decoder's batches are 1024 sightings: one here)
        assert len({x for x in told if x < 1}) >= 5


def test_the_share_counts_every_file(monkeypatch, tmp_path):
    """Two copies of a file, read in step: a share of both together (one file's bytes out of
    one file's size would be twice as much)."""
    monkeypatch.setattr(fastpath, "CHUNK", 512)
    monkeypatch.setattr(engine, "PROGRESS_EVERY", 0)
    for name in ("a", "b"):
        shutil.copytree(SAMPLES / "http-get" / "worker1", tmp_path / name)
    size = (tmp_path / "a" / "eth1.pcap").stat().st_size
    told: list[float] = []
    inputs = inputs_from_paths([str(tmp_path / "a" / "eth1.pcap")]) + inputs_from_paths([str(tmp_path / "b" / "eth1.pcap")])
    Correlator(inputs, CorrelationOptions(keep_packets=False, jobs=1), told.append).run()
    assert told[0] == pytest.approx(2 * (24 + 512) / (2 * size)) and told[-1] == 1.0


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_on_a_terminal(monkeypatch):
    # (a clock that stands still and no redraw in between: the same text however busy the machine)
    monkeypatch.setattr(progress_line.time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(progress_line.ReadingProgress, "TICK", 3600)
    line = progress_line.ReadingProgress(term := Terminal())
    line(0.5)
    assert term.getvalue() == ""  # (nothing in the first second)
    monkeypatch.setattr(progress_line.ReadingProgress, "DELAY", 0)
    line(0.42)
    line(1.0)
    line(1.0)  # (the same line is not written again)
    line(None)
    assert term.getvalue() == ("\r\x1b[Kreading captures:  42% (0 s)"
                               "\r\x1b[Kcaptures read, working out the flows (0 s)\r\x1b[K")


def test_after_reading_the_seconds_go_on(monkeypatch):
    """The flows and the view can take a while after the last byte is read: the line says so and
    its seconds go on (a thread redraws it) until the result is shown."""
    clock = iter(range(0, 10_000))
    monkeypatch.setattr(progress_line.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(progress_line.ReadingProgress, "TICK", 0.001)
    line = progress_line.ReadingProgress(term := Terminal())
    line(0.995)  # (not yet all: says 99%)
    line(1.0)
    wait_for(lambda: "(5 s)" in term.getvalue())
    line(None)
    text = term.getvalue()
    assert text.startswith("\r\x1b[Kreading captures:  99% (1 s)\r\x1b[Kcaptures read, working out the flows (2 s)")
    assert text.endswith("\r\x1b[K") and line.ticker is None
    settled = term.getvalue()
    import time
    time.sleep(0.05)
    assert term.getvalue() == settled  # (stopped)


def test_analyze_shows_it_on_a_terminal_only(capsys, monkeypatch):
    monkeypatch.setattr(progress_line.ReadingProgress, "DELAY", 0)
    monkeypatch.setattr(fastpath, "CHUNK", 512)
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--summary", "-o", "json")
    assert code == 0 and err == "" and json.loads(out)["schema"] == "tracer.trace/v1"
    import sys
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True, raising=False)
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--summary", "-o", "json")
    assert code == 0 and json.loads(out)["schema"] == "tracer.trace/v1"
    assert "reading captures:" in err and err.endswith("\r\x1b[K")  # (wiped before the result)
