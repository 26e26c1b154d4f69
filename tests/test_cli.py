"""The `tracer` entry point: how the end of a command reaches the user."""

from __future__ import annotations

import click
import pytest

from tracer import cli
from tracer.errors import ExitCode


class _InterruptedDescriptor:
    def __set_name__(self, owner, name):
        raise KeyboardInterrupt  # what Ctrl-C does when it lands while a module defines a class


@click.command()
def _imports_a_class_when_ctrl_c_comes():
    class Late:  # noqa: F841 - defining it is the point
        field = _InterruptedDescriptor()


def test_ctrl_c_while_a_class_is_created_is_an_interrupt_not_a_traceback(monkeypatch, capsys):
    # Python 3.11 wraps that KeyboardInterrupt in "RuntimeError: Error calling __set_name__";
    # a follow interrupted while it imported its orchestration printed that traceback.
    monkeypatch.setattr(cli.cli, "get_command", lambda ctx, name: _imports_a_class_when_ctrl_c_comes)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["boom"])
    assert exit_.value.code == int(ExitCode.INTERRUPTED)
    assert capsys.readouterr().err.strip().splitlines()[-1] == "tracer: interrupted"


def test_other_errors_still_show_as_errors(monkeypatch):
    @click.command()
    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.cli, "get_command", lambda ctx, name: broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["broken"])


def test_view_summary_is_the_summary(capsys):
    from factories import SAMPLES, run_cli
    a = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--summary")
    b = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--view", "summary")
    assert a == b and a[0] == 0
    hops = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--view", "hops")
    grid = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), "--view", "grid")
    default = run_cli(capsys, "analyze", str(SAMPLES / "http-get"))
    assert "packet 1:" in hops[1] and "packet 1:" not in default[1]
    # a few flows: the grid is the default, with a line saying how to get the hop tables
    assert default[1] == grid[1] + "--view hops: each packet's hops with their addresses, MACs, TTLs and why\n"
