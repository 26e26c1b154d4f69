"""Warm agents on Kubernetes: `tracer agents install|uninstall|status` and follow through them.

Against the stand-in API server over the lab (tests/kmock_exec.py), which plays the DaemonSet
controller and the kubelet: the DaemonSet's pods run the real agent server (`agent.py --serve`)
in the nodes' namespaces, and tracer's execs into them run the real thin client (`--via`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kmock_exec import CAPTURE_NAMESPACE, DAEMONSETS, PODS, StandIn
from test_k8s_follow import _alive, _request_in_flight, hops, interrupt_when, on_both, tracer_k8s
from tracer.cluster.k8s import agents as k8s_agents
from tracer.cluster.k8s.capture_pods import DEFAULT_IMAGE
from tracer.cluster.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def standin(lab: Lab) -> Iterator[StandIn]:
    with StandIn(lab) as s:
        yield s


def agents_cli(*args: str, standin: StandIn) -> tuple[int, str, str]:
    proc = tracer_k8s("agents", *args, kubeconfig=str(standin.kubeconfig))
    out, err = proc.communicate(timeout=90)
    return proc.returncode, out, err


def agent_pods(standin: StandIn) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in standin.pods(CAPTURE_NAMESPACE)
            if p["metadata"].get("labels", {}).get(k8s_agents.APP) == k8s_agents.NAME}


def servers(standin: StandIn) -> list[int]:
    """The PIDs of the agent servers the stand-in's 'kubelet' runs (the pods' main processes)."""
    return [pid for pid, ns, _, argv in standin.snapshot()["spawned"] if "--serve" in argv and _alive(pid)]


@pytest.fixture
def installed(standin: StandIn) -> Iterator[None]:
    code, out, err = agents_cli("install", "-o", "json", standin=standin)
    assert code == 0, err
    yield
    code, out, err = agents_cli("uninstall", standin=standin)
    assert code == 0, err


def test_the_manifest_in_the_repo_is_what_install_creates() -> None:
    docs = list(yaml.safe_load_all((REPO / "manifests" / "agents.yaml").read_text()))
    assert docs == [k8s_agents.manifest(namespace=CAPTURE_NAMESPACE, image=DEFAULT_IMAGE)]
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert "activeDeadlineSeconds" not in docs[0]["spec"]["template"]["spec"]  # a watch may run for hours


def test_the_rbac_manifest_lets_tracer_manage_the_daemon_set_in_the_capture_namespace() -> None:
    role = next(d for d in yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text())
                if d["kind"] == "Role" and d["metadata"]["namespace"] == CAPTURE_NAMESPACE)
    rule = next(r for r in role["rules"] if "daemonsets" in r["resources"])
    assert rule["apiGroups"] == ["apps"] and set(rule["verbs"]) >= {"get", "create", "patch", "delete"}


def test_install_runs_an_agent_server_per_node_and_uninstall_removes_them(standin: StandIn) -> None:
    code, out, err = agents_cli("install", "-o", "json", standin=standin)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "tracer.agents/v1" and doc["action"] == "installed" and doc["where"] == CAPTURE_NAMESPACE
    assert [(n["node"], n["ready"], n["state"]) for n in doc["nodes"]] == [("worker1", True, "running"),
                                                                           ("worker2", True, "running")]
    pods = agent_pods(standin)
    assert sorted(p["spec"]["nodeName"] for p in pods.values()) == ["worker1", "worker2"]
    assert sorted(n["agent"] for n in doc["nodes"]) == sorted(pods)
    running = servers(standin)
    assert len(running) == 2
    again = json.loads(agents_cli("install", "-o", "json", standin=standin)[1])
    assert again["action"] == "unchanged" and agent_pods(standin).keys() == pods.keys()
    code, out, _ = agents_cli("status", standin=standin)
    assert code == 0 and "warm capture agents (namespace tracer-capture)" in out and "running" in out

    code, out, err = agents_cli("uninstall", standin=standin)
    assert code == 0, err
    assert "warm capture agents uninstalled" in out
    assert agent_pods(standin) == {} and not any(_alive(p) for p in running)
    handler = standin.handler
    assert standin.call(lambda: [k for k, o in handler.objects.items() if k[0] == DAEMONSETS and not o.deleted]) == []
    code, out, _ = agents_cli("uninstall", standin=standin)
    assert code == 0 and "no warm capture agents were installed" in out
    assert "no warm capture agents" in agents_cli("status", standin=standin)[1]


def test_install_with_another_image_updates_the_daemon_set(standin: StandIn, installed: None) -> None:
    before = agent_pods(standin)
    code, out, err = agents_cli("install", "--capture-image", "localhost:32000/tracer-capture:next", "-o", "json",
                                standin=standin)
    assert code == 0, err
    assert json.loads(out)["action"] == "updated"
    after = agent_pods(standin)
    assert after.keys().isdisjoint(before.keys()) and len(after) == 2  # the pods of the old template went
    assert {p["spec"]["containers"][0]["image"] for p in after.values()} == {"localhost:32000/tracer-capture:next"}


def test_an_image_that_cannot_be_pulled_is_said_with_what_to_do(standin: StandIn) -> None:
    try:
        code, out, err = agents_cli("install", "--capture-image", "unpullable/tracer-capture", standin=standin)
        assert code != 0
        assert "cannot start: ErrImagePull" in err and "capture-pod/README.md" in err and "Traceback" not in err
    finally:
        assert agents_cli("uninstall", standin=standin)[0] == 0


def test_follow_through_warm_agents_makes_no_capture_pod_and_shows_the_same_hops(
        lab: Lab, standin: StandIn, installed: None) -> None:
    before = {k: len(v) for k, v in standin.snapshot().items()}
    k8s, on_lab = on_both("follow", lab=lab, standin=standin)
    assert k8s["follow"]["curl"][0]["status"] == 200
    assert hops(k8s) == hops(on_lab) and all(len(points) == 6 for _, points in hops(k8s))
    snap = {k: v[before[k]:] for k, v in standin.snapshot().items()}
    pods = agent_pods(standin)
    into = {(pod, argv[:4]) for ns, pod, argv in snap["exec"] if ns == CAPTURE_NAMESPACE}
    # discovery and the captures exec'd into the agents' pods: the thin client, no capture pod
    assert {pod for pod, _ in into} == set(pods)
    assert {argv for _, argv in into if argv[:2] == ("python3", "/agent.py")} == {
        ("python3", "/agent.py", "--via", k8s_agents.SOCKET)}
    handler = standin.handler
    created = standin.call(lambda: [k[2] for k in handler.objects if k[0] == PODS and k[2].startswith("tracer-cap-")])
    assert created == [] or all(name not in pods for name in created)
    assert set(agent_pods(standin)) == set(pods) and len(servers(standin)) == 2  # the agents stay


def test_cold_agents_on_request_and_warm_only_where_there_are(lab: Lab, standin: StandIn) -> None:
    code, out, err = agents_cli("status", standin=standin)
    assert "no warm capture agents" in out
    proc = tracer_k8s("follow", "curl", "httpbin", "--agents", "warm", kubeconfig=str(standin.kubeconfig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert "no warm capture agent runs on node worker1" in err and "tracer agents install" in err
    assert standin.pods(CAPTURE_NAMESPACE) == []


def test_cold_agents_when_asked_even_where_warm_ones_run(standin: StandIn, installed: None) -> None:
    before = len(standin.snapshot()["exec"])
    proc = tracer_k8s("follow", "curl", "httpbin", "--agents", "cold", kubeconfig=str(standin.kubeconfig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    used = {pod for ns, pod, argv in standin.snapshot()["exec"][before:] if ns == CAPTURE_NAMESPACE}
    assert used and all(p.startswith("tracer-cap-") for p in used)
    assert set(p for p in (pp["metadata"]["name"] for pp in standin.pods(CAPTURE_NAMESPACE))) == set(agent_pods(standin))


def test_ctrl_c_during_a_warm_follow_ends_its_agents_and_leaves_the_servers(standin: StandIn, installed: None) -> None:
    running = servers(standin)
    before = {k: len(v) for k, v in standin.snapshot().items()}
    proc = tracer_k8s("follow", "curl", "httpbin", "--path", "/delay/2", kubeconfig=str(standin.kubeconfig))
    out, err = interrupt_when(proc, standin, before, _request_in_flight, "request in flight")
    assert proc.returncode == 130, err
    vias = [pid for pid, ns, _, argv in standin.snapshot()["spawned"][before["spawned"]:] if "--via" in argv]
    assert len(vias) == 2
    deadline = time.monotonic() + 10  # the thin clients end when their agents end (after the EOF, a drain)
    while any(_alive(p) for p in vias) or _forked(running):
        assert time.monotonic() < deadline, (vias, _forked(running))
        time.sleep(0.05)
    assert servers(standin) == running


def _forked(servers: list[int]) -> list[int]:
    from factories import children

    return [c for s in servers for c in children(s)]
