"""The one backend factory's choice and the options every backend-using command shares."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from tracer.cluster.backends import BackendOptions, choose_backend
from tracer.commands.options import backend_options
from tracer.errors import UsageError


@pytest.mark.parametrize(("options", "env", "chosen"), [
    (BackendOptions(), {}, "lab"),
    (BackendOptions(kubeconfig="k"), {}, "kubernetes"),
    (BackendOptions(capture_namespace="ns"), {}, "kubernetes"),
    (BackendOptions(), {"KUBECONFIG": "k"}, "kubernetes"),  # (and no lab up)
    (BackendOptions(backend="lab"), {"KUBECONFIG": "k"}, "lab"),
])
def test_the_factory_picks_the_backend_as_backend_says(options: BackendOptions, env: dict[str, str], chosen: str,
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TRACER_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert choose_backend(options) == chosen


def test_kubernetes_options_on_the_lab_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="apply to --backend kubernetes only"):
        choose_backend(BackendOptions(backend="lab", context="c"))


def test_a_command_gets_the_backend_options_as_one_value() -> None:
    got = []

    @click.command()
    @click.argument("src")
    @backend_options
    @click.option("--count", type=int, default=1)
    def command(src, backend, count):
        """Help text."""
        got.append((src, backend, count))

    result = CliRunner().invoke(command, ["x", "-n", "team-a", "--count", "2", "--backend", "kubernetes"])
    assert result.exit_code == 0, result.output
    assert got == [("x", BackendOptions(backend="kubernetes", namespace="team-a"), 2)]
    assert "Help text." in CliRunner().invoke(command, ["--help"]).output
