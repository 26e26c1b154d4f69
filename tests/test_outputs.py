"""Output formats are a registry (tracer.render.outputs.OUTPUTS): --output offers its names, and
show() hands the Analysis to the registered view."""

from __future__ import annotations

import io
import sys
import types

from factories import SAMPLES
from tracer.app.analyze import AnalyzeRequest, analyze
from tracer.commands import analyze as analyze_command
from tracer.commands import follow as follow_command
from tracer.render import analysis as analysis_view
from tracer.render.outputs import OUTPUTS


def _output_choices(command) -> list[str]:
    option = next(p for p in command.command.params if p.name == "output")
    return list(option.type.choices)


def test_the_commands_offer_the_registered_formats():
    assert list(OUTPUTS) == ["text", "json"]
    assert _output_choices(analyze_command) == _output_choices(follow_command) == list(OUTPUTS)


def test_a_registered_format_is_what_show_calls(monkeypatch):
    seen = []
    module = types.ModuleType("tracer_test_lines")

    def lines(a, out, *, summary, extra_json, header, hint, view, progress):
        progress(None)
        seen.append((len(a.trace.flows), summary, extra_json))
        out.write("".join(f"{f.client} {f.server}\n" for f in a.shown))

    module.lines = lines
    monkeypatch.setitem(sys.modules, "tracer_test_lines", module)
    monkeypatch.setitem(OUTPUTS, "lines", "tracer_test_lines:lines")
    out = io.StringIO()
    a = analyze(AnalyzeRequest(paths=(str(SAMPLES / "http-get"),)))
    analysis_view.show(a, out, output="lines", extra_json={"k": 1})
    assert seen == [(len(a.trace.flows), False, {"k": 1})]
    assert out.getvalue() == "".join(f"{f.client} {f.server}\n" for f in a.shown) and a.shown
