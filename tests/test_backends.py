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
    (BackendOptions(), {"KUBECONFIG": "{tmp}/kc"}, "kubernetes"),  # (and no lab up)
    (BackendOptions(), {"KUBECONFIG": "{tmp}/missing"}, "lab"),  # (a file kubectl would not find either)
    (BackendOptions(), {"HOME_KUBE": "1"}, "kubernetes"),  # ~/.kube/config alone, as kubectl reads it
    (BackendOptions(), {"HOME_KUBE": "1", "LAB_UP": "1"}, "lab"),  # a lab that is up comes first
    (BackendOptions(), {"IN_POD": "1"}, "kubernetes"),  # in a pod: its service account
    (BackendOptions(backend="lab"), {"KUBECONFIG": "{tmp}/kc"}, "lab"),
])
def test_the_factory_picks_the_backend_as_kubectl_would(options: BackendOptions, env: dict[str, str], chosen: str,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import tracer.cluster.backends as backends
    from tracer.cluster.lab import StateStore, exercise
    from tracer.cluster.lab.state import LabState

    monkeypatch.setenv("TRACER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "kc").write_text("apiVersion: v1\nkind: Config\n")
    if env.get("KUBECONFIG"):
        monkeypatch.setenv("KUBECONFIG", env["KUBECONFIG"].format(tmp=tmp_path))
    if env.get("HOME_KUBE"):
        (tmp_path / "home" / ".kube").mkdir(parents=True)
        (tmp_path / "home" / ".kube" / "config").write_text("apiVersion: v1\n")
    if env.get("LAB_UP"):
        store = StateStore.from_env()
        store.save(LabState(prefix=store.prefix, topology=exercise()))
    if env.get("IN_POD"):
        token = tmp_path / "token"
        token.write_text("t")
        monkeypatch.setattr(backends, "SERVICE_ACCOUNT_TOKEN", str(token))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.152.183.1")
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


def test_with_only_kubectl_s_config_the_commands_go_to_the_cluster(tmp_path) -> None:
    """As a microk8s user meets it: no lab up, no flags, no $KUBECONFIG, only ~/.kube/config.
    tracer goes to that cluster (here one that does not answer: its error, exit 6); with no
    kubeconfig either, the lab's "no lab is up" names both ways."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env.update(HOME=str(home), TRACER_LAB_PREFIX="trnolab-", TRACER_STATE_DIR=str(tmp_path / "state"))

    def tracer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    none = tracer("path", "curl", "httpbin")
    assert none.returncode == 4 and "no lab is up" in none.stderr and "--kubeconfig FILE" in none.stderr
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {token: t}}]\n")
    cluster = tracer("path", "curl", "httpbin")
    assert cluster.returncode == 6, cluster.stderr
    assert "cannot reach the Kubernetes API" in cluster.stderr and "no lab is up" not in cluster.stderr
