"""A Service with two endpoints on two nodes (issue "Services and names"): kube-proxy's rules
pick one per connection (`--probability 0.5`), so follow captures the ways to both, and each
flow shows which endpoint it took: its DNAT to that pod, its way ending at that pod's veth,
every packet there; `tracer path` names both ways."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import secrets
import subprocess
import sys

import pytest

from conftest import make_store, run_tracer, store_env
from tracer.cluster.lab import down, up
from tracer.cluster.lab.topology import ServicePort, ServiceSpec, _pod, exercise, with_pods

pytestmark = [pytest.mark.root, pytest.mark.slow]
WEB_IP = "10.152.183.60"


@pytest.fixture(scope="module")
def lab():
    topo = with_pods(exercise(), (("httpbin2", "worker1", "httpbin"),))
    web = ServiceSpec(name="web", namespace="default", cluster_ip=WEB_IP, endpoints=("httpbin", "httpbin2"),
                      ports=(ServicePort(name="http", protocol="tcp", port=80, target_port=80),))
    # a second DNS pod, on worker1 (kubeadm runs two CoreDNS): kube-dns in front of both
    block = ipaddress.IPv4Network(topo.node("worker1").block)
    dns2 = _pod("coredns2", "worker1", str(block.network_address + block.num_addresses - 2), "dns",
                namespace="kube-system")
    services = tuple(dataclasses.replace(s, endpoints=(*s.endpoints, "coredns2")) if s.name == "kube-dns" else s
                     for s in topo.services)
    store = make_store("e" + secrets.token_hex(2))
    built = up(dataclasses.replace(topo, pods=(*topo.pods, dns2), services=(*services, web)), store=store)
    try:
        yield built
    finally:
        down(store)


def test_each_request_shows_the_endpoint_it_took(lab) -> None:
    # (16 requests, each to either endpoint with 1/2: both are taken but once in 2**15 runs)
    proc = run_tracer("follow", "curl", "svc/web", "--count", "16", "-o", "json", store=lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [c["status"] for c in doc["follow"]["curl"]] == [200] * 16
    pods = {lab.pod(n).ip: lab.pod(n) for n in ("httpbin", "httpbin2")}
    flows = [f for f in doc["flows"] if f["protocol"] == "tcp"]
    assert len(flows) == 16
    taken = set()
    for f in flows:
        assert f["nat"]["kind"] == "dnat" and f["nat"]["original"] == f"{WEB_IP}:80"
        ip = f["nat"]["translated"].rsplit(":", 1)[0]
        pod = pods[ip]
        taken.add(pod.name)
        way = f["summary"]["way"]["request"]
        assert way[-1] == f"{pod.node}/{pod.host_veth}", way
        assert f["summary"]["reached_end"] == f["summary"]["packets"]
        if pod.node == "worker1":  # (the same-node endpoint: no tunnel on its way)
            assert not any("eth1" in p for p in way)
    text = run_tracer("follow", "curl", "svc/web", store=lab.store, check=True).stdout
    assert "-> endpoints httpbin, httpbin2: kube-proxy picks one per connection" in text
    assert taken == {"httpbin", "httpbin2"}  # (the same-node way and the tunnel's, each checked above)


def test_path_names_the_way_to_each_endpoint(lab) -> None:
    doc = json.loads(run_tracer("path", "curl", "svc/web", "-o", "json", store=lab.store, check=True).stdout)
    assert doc["dst"]["name"] == "httpbin" and [e["dst"]["name"] for e in doc["endpoints"]] == ["httpbin2"]
    text = run_tracer("path", "curl", "svc/web", store=lab.store, check=True).stdout
    assert "Or to endpoint httpbin2" in text


def test_watch_lights_up_the_way_each_request_took_and_its_lookup(lab) -> None:
    """watch by name with two endpoints and two DNS pods: the grid's columns are the points of
    all the ways; each packet lights up the points of its own way (the same-node endpoint's: its
    two veths; the other node's: all six), every one of them, and none off it."""
    env = {**store_env(lab.store), "COLUMNS": "320"}
    proc = subprocess.run([sys.executable, "-m", "tracer", "watch", "curl", "http://web/get", "--iterations", "3"],
                          capture_output=True, text=True, env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "request 3: HTTP 200" in proc.stdout
    header = proc.stdout
    for pod in ("httpbin", "httpbin2", "coredns", "coredns2"):
        assert lab.pod(pod).host_veth in header, pod  # a column for every way's end
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("→ ", "← "))]
    assert rows and all("·" not in r for r in rows)  # every packet at every point of its way
    lengths = {"worker1": 2, "worker2": 6}  # (curl is on worker1)

    def lit(row: str) -> int:
        return sum(1 for c in row.split("│")[1:] if c.strip())

    syn = next(r for r in rows if r.startswith("→ SYN"))
    to = "httpbin2" if "(httpbin2)" in syn else "httpbin"
    assert lit(syn) == lengths[lab.pod(to).node], syn
    lookups = [r for r in rows if "DNS" in r]
    assert lookups and all(lit(r) in (2, 6) for r in lookups)


def test_lookups_to_two_dns_pods_each_show_the_one_that_answered(lab) -> None:
    """kube-dns in front of coredns (worker2) and coredns2 (worker1): the captures cover the ways
    to both; each lookup's way ends at the DNS pod its DNAT names, every packet there."""
    proc = run_tracer("follow", "curl", "http://web/get", "--count", "16", "-o", "json", store=lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    pods = {lab.pod(n).ip: lab.pod(n) for n in ("coredns", "coredns2")}
    lookups = [f for f in doc["flows"] if f["protocol"] == "udp"]
    assert len(lookups) >= 16  # (a lookup per request, each from its own port)
    answered = set()
    for f in lookups:
        assert f["nat"]["original"] == "10.152.183.10:53"
        pod = pods[f["nat"]["translated"].rsplit(":", 1)[0]]
        answered.add(pod.name)
        assert f["summary"]["way"]["request"][-1] == f"{pod.node}/{pod.host_veth}"
        assert f["summary"]["reached_end"] == f["summary"]["packets"]
    assert answered == {"coredns", "coredns2"}  # (each pod with 1/2 per lookup: both but once in 2**15 runs)
