"""`tracer lab up/down/status`: clear messages, no tracebacks, nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import leftovers, run_tracer, store_env
from tracer.errors import LabError, NotFoundError
from tracer.cluster.lab import Lab, StateStore, exercise, netns, up, wiring
from tracer.cluster.lab.state import process_start_time
from tracer.cluster.lab.kube_proxy import NETNS_ETC

pytestmark = pytest.mark.root


def root_links() -> list[str]:
    return sorted(l["ifname"] for l in json.loads(subprocess.run(
        ["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout))


def test_up_status_down_from_new_processes(store: StateStore) -> None:
    before = root_links()
    up_proc = run_tracer("lab", "up", store=store)
    assert up_proc.returncode == 0, up_proc.stderr
    assert root_links() == before  # nothing in the root namespace
    assert sorted(leftovers(store)) == sorted(store.prefix + n for n in ("underlay", "worker1", "worker2", "curl", "httpbin",
                                                                      "coredns"))

    status = json.loads(run_tracer("lab", "status", "--output", "json", store=store, check=True).stdout)
    assert status["up"] is True and status["complete"] is True
    assert [(n["name"], n["underlay_ip"], n["tunnel_mac"]) for n in status["nodes"]] == [
        ("worker1", "192.168.56.11", "66:ca:11:c0:00:01"), ("worker2", "192.168.56.12", "66:ca:11:c0:00:02")]
    pods = {p["name"]: p for p in status["pods"]}
    assert (pods["curl"]["ip"], pods["curl"]["host_veth"], pods["curl"]["host_veth_mac"]) == (
        "172.18.166.139", "cali35e3a5cb80b", "ee:ee:ee:ee:ee:ee")  # the seed's own cali name
    assert pods["httpbin"]["ip"] == "172.18.104.14"
    assert [(s["namespace"], s["name"], s["cluster_ip"], s["ports"]) for s in status["services"]] == [
        ("default", "httpbin", "10.152.183.50", ["80/tcp -> 80"]),
        ("kube-system", "kube-dns", "10.152.183.10", ["53/udp -> 53", "53/tcp -> 53"])]
    assert status["dns"].startswith("cluster DNS 10.152.183.10 (kube-dns) -> dnsmasq in pod kube-system/coredns on worker2")
    pid, dns_pid = pods["httpbin"]["pid"], pods["coredns"]["pid"]
    assert process_start_time(pid) is not None and process_start_time(dns_pid) is not None
    assert (NETNS_ETC / f"{store.prefix}curl" / "resolv.conf").read_text().startswith(
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.152.183.10\n")
    assert status["warm_agents"] is True
    agents = [n["agent_pid"] for n in status["nodes"]]
    assert all(process_start_time(a) is not None for a in agents)  # a warm capture agent per node
    assert [store.socket_path(n).is_socket() for n in ("worker1", "worker2")] == [True, True]
    text = run_tracer("lab", "status", store=store, check=True).stdout
    assert "cali35e3a5cb80b" in text and f"warm (pid {agents[0]})" in text

    again = run_tracer("lab", "up", store=store)
    assert again.returncode == 6
    assert "a lab is already up" in again.stderr and "tracer lab down" in again.stderr
    assert "Traceback" not in again.stderr

    assert run_tracer("lab", "down", store=store, check=True).stdout.startswith("lab down")
    assert leftovers(store) == []
    assert process_start_time(pid) is None and process_start_time(dns_pid) is None
    assert all(process_start_time(a) is None for a in agents)
    assert not store.socket_path("worker1").parent.exists()
    assert list(store.directory.glob(store.prefix + "*")) == []  # (state, lock, logs, sockets)
    assert list(NETNS_ETC.glob(store.prefix + "*")) == []  # (the pods' resolv.conf went with them)
    assert not store.path.exists()
    assert root_links() == before

    twice = run_tracer("lab", "down", store=store)
    assert twice.returncode == 0 and "no lab is up" in twice.stdout
    status = json.loads(run_tracer("lab", "status", "-o", "json", store=store, check=True).stdout)
    assert status["up"] is False
    assert "no lab is up" in run_tracer("lab", "status", store=store, check=True).stdout


def test_failed_up_tears_down_what_it_built(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail late: namespaces, links and httpbin exist by the time the pods are configured.
    monkeypatch.setattr(wiring, "pod_side_slash32", lambda pod, gateway: ["route add 10.0.0.0/8 via 203.0.113.1"])
    with pytest.raises(LabError, match="failed"):
        up(exercise(), store=store)
    assert leftovers(store) == []
    assert not store.path.exists()
    assert list(store.directory.glob(store.prefix + "*")) == []  # (the warm agents' logs and sockets too)


def test_foreign_namespace_is_left_alone(store: StateStore) -> None:
    foreign = store.prefix + "worker2"
    netns.add([foreign])
    try:
        proc = run_tracer("lab", "up", store=store)
        assert proc.returncode == 6
        assert f"{foreign} exists" in proc.stderr and "Traceback" not in proc.stderr
        assert leftovers(store) == [foreign]
    finally:
        netns.delete([foreign])


@pytest.mark.parametrize("argv", [["lab", "up"], ["path", "curl", "httpbin"], ["follow", "curl", "httpbin"]])
def test_without_root_says_so(store: StateStore, argv: list[str]) -> None:
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "tracer", *argv],
        capture_output=True, text=True, env=store_env(store), timeout=60,
    )
    assert proc.returncode == 5, proc.stderr
    # the command as the user typed it, and how to run it as root
    assert f"tracer {' '.join(argv[:2 if argv[0] == 'lab' else 1])} needs root" in proc.stderr, proc.stderr
    assert "sudo tracer" in proc.stderr and "Traceback" not in proc.stderr
    assert leftovers(store) == []


def test_more_nodes(store: StateStore) -> None:
    assert run_tracer("lab", "up", "--nodes", "3", store=store).returncode == 0
    status = json.loads(run_tracer("lab", "status", "-o", "json", store=store, check=True).stdout)
    assert [n["name"] for n in status["nodes"]] == ["worker1", "worker2", "worker3"]
    pod3 = next(p for p in status["pods"] if p["name"] == "pod3")
    assert (pod3["node"], pod3["ip"]) == ("worker3", "172.18.3.10")
    curl = run_tracer("lab", "exec", "curl", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                      "http://172.18.3.10/status/200", store=store)
    assert curl.stdout == "200"
    path = json.loads(run_tracer("path", "curl", "pod3", "-o", "json", store=store, check=True).stdout)
    assert [p["id"] for p in path["points"]][1:5] == [
        "worker1/vxlan.calico", "worker1/eth1", "worker3/eth1", "worker3/vxlan.calico"]
    assert run_tracer("lab", "down", store=store).returncode == 0
    assert leftovers(store) == []


def test_bad_node_count_is_a_usage_error(store: StateStore) -> None:
    proc = run_tracer("lab", "up", "--nodes", "1", store=store)
    assert proc.returncode == 2 and "--nodes" in proc.stderr
    assert leftovers(store) == []


def test_api_loads_the_running_lab_from_state(lab, store: StateStore) -> None:
    again = Lab.load(lab.store)
    assert again.pod("httpbin").ip == "172.18.104.14"
    assert again.node("worker2").netns == lab.store.prefix + "worker2"
    res = again.exec("worker1", ["ip", "route", "get", "172.18.104.14"])
    assert res.returncode == 0 and b"dev vxlan.calico" in res.stdout
    with pytest.raises(NotFoundError) as none:
        Lab.load(store)
    assert none.value.hint == "run: tracer lab up"
    with pytest.raises(NotFoundError, match="no pod 'nginx'"):
        again.pod("nginx")


def test_up_without_the_httpbin_packages_says_what_to_install_and_builds_nothing(store: StateStore, monkeypatch):
    from tracer.cluster.lab import control
    monkeypatch.setattr(control, "HTTPBIN_MODULES", ("httpbin", "tracer_test_no_such_module"))
    with pytest.raises(LabError) as e:
        up(exercise(), store=store)
    assert "need the Python packages tracer_test_no_such_module" in e.value.message
    assert e.value.hint.startswith(f"{sys.executable} -m pip install tracer_test_no_such_module")
    assert leftovers(store) == [] and store.load() is None
    # and they are tracer's own dependencies, so a plain install has them
    import tomllib
    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {d.split(">")[0] for d in deps} >= {"httpbin", "gunicorn"}


def test_exec_reaches_the_underlay_segment_too(lab) -> None:
    """The nodes' L2 segment is part of the lab: `bridge fdb` on its switch shows the nodes' NICs
    it learnt once traffic crossed it."""
    assert lab.exec("curl", ["curl", "-s", "-o", "/dev/null", "--max-time", "5", "http://172.18.104.14/get"]).returncode == 0
    proc = run_tracer("lab", "exec", "underlay", "--", "bridge", "fdb", "show", "dev", "br0", store=lab.store)
    assert proc.returncode == 0, proc.stderr
    proc = run_tracer("lab", "exec", "underlay", "--", "bridge", "fdb", "show", store=lab.store)
    nics = {lab.node(n).underlay_mac for n in ("worker1", "worker2")}
    assert proc.returncode == 0 and all(mac in proc.stdout for mac in nics), proc.stdout


def test_more_pods_on_a_node_give_a_class_the_same_node_way(store: StateStore) -> None:
    proc = run_tracer("lab", "up", "--pod", "httpbin2=worker1", "--pod", "client2=worker2:curl", store=store)
    assert proc.returncode == 0, proc.stderr
    try:
        status = json.loads(run_tracer("lab", "status", "-o", "json", store=store, check=True).stdout)
        pods = {p["name"]: p for p in status["pods"]}
        assert (pods["httpbin2"]["node"], pods["httpbin2"]["ip"]) == ("worker1", "172.18.166.140")
        assert (pods["client2"]["node"], pods["client2"]["ip"]) == ("worker2", "172.18.104.15")
        doc = json.loads(run_tracer("follow", "curl", "httpbin2", "-o", "json", store=store, check=True).stdout)
        assert doc["follow"]["curl"][0]["status"] == 200
        assert [p["id"] for p in doc["points"] if p["packets"]] == [
            f"worker1/{pods['curl']['host_veth']}", f"worker1/{pods['httpbin2']['host_veth']}"]
        doc = json.loads(run_tracer("follow", "client2", "httpbin", "-o", "json", store=store, check=True).stdout)
        assert doc["follow"]["curl"][0]["status"] == 200
    finally:
        run_tracer("lab", "down", store=store)
    assert leftovers(store) == []


@pytest.mark.parametrize("spec, words", [
    ("x=worker9", "the lab has no node 'worker9'"),
    ("Bad_Name=worker1", "is not a pod name"),
    ("curl=worker1", "has a pod or node 'curl' already"),
    ("x=worker1:nginx", "the app is one of curl, httpbin"),
    ("x", "expected NAME=NODE[:APP]"),
])
def test_a_bad_extra_pod_is_refused_before_anything_is_built(store: StateStore, spec: str, words: str) -> None:
    proc = run_tracer("lab", "up", "--pod", spec, store=store)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert leftovers(store) == []
