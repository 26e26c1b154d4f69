"""kube-proxy's nftables mode (issue "Services and names", item 3): the lab writes every node's
table `ip kube-proxy` as kube-proxy's nftables proxier does (`lab up --kube-proxy nftables`), the
kernel DNATs by it, and tracer reads the rule that did it with `nft list table ip kube-proxy`
where iptables-save shows no KUBE chains: by the service-ips map, the service chain's numgen
vmap and the endpoint chain's `dnat to`."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shutil

import pytest

from conftest import make_store, ns_run, run_tracer
from tracer.app.target import _nft_rule
from tracer.cluster.lab import down, up
from tracer.model import ServiceRef
from tracer.cluster.lab.kube_proxy import nft_endpoint_chain, nft_service_chain
from tracer.cluster.lab.topology import ServicePort, ServiceSpec, exercise, with_pods

pytestmark = [pytest.mark.root]
WEB_IP = "10.152.183.60"


def test_chain_names_are_kube_proxy_s() -> None:
    # kube-proxy's own test (pkg/proxy/nftables/proxier_test.go): ns1/svc1 port p80, endpoint 10.180.0.1:80
    svc = ServiceSpec(name="svc1", namespace="ns1", cluster_ip="172.30.0.41", endpoints=(),
                      ports=(ServicePort(name="p80", protocol="tcp", port=80, target_port=80),))
    assert nft_service_chain(svc, svc.ports[0]) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft_endpoint_chain(svc, svc.ports[0], "10.180.0.1:80") == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


SERVICE_CHAIN_DNAT = """table ip kube-proxy {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.14.2 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
	}

	chain service-4AT6LBPK-ns3/svc3/tcp/p80 {
		ip daddr 10.96.14.2 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
		meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.3.2 . 80, 1 : 10.0.3.3 . 80 }
	}
}
"""


@pytest.mark.parametrize("endpoint, rule", [
    ("10.0.3.3:80", "service-4AT6LBPK-ns3/svc3/tcp/p80: dnat ip addr . port to 10.0.3.3 . 80 (numgen map)"),
    ("10.0.3.33:80", ""),  # (not an endpoint of it: no rule, not a prefix's)
])
def test_a_service_chain_that_dnats_itself_is_read_too(endpoint: str, rule: str) -> None:
    """kube-proxy without per-endpoint chains (its KEP's form, no session affinity): the service
    chain DNATs by an anonymous numgen map of address . port."""
    svc = ServiceRef(name="svc3", namespace="ns3", cluster_ip="10.96.14.2", port=80, target_port=80,
                     endpoints=("a", "b"))
    assert _nft_rule(SERVICE_CHAIN_DNAT.splitlines(), svc, endpoint) == rule
    single = SERVICE_CHAIN_DNAT.replace(
        "dnat ip addr . port to numgen random mod 2 map { 0 : 10.0.3.2 . 80, 1 : 10.0.3.3 . 80 }", "dnat to 10.0.3.3:80")
    assert _nft_rule(single.splitlines(), svc, "10.0.3.3:80") == "service-4AT6LBPK-ns3/svc3/tcp/p80: dnat to 10.0.3.3:80"


@pytest.fixture(scope="module")
def lab():
    assert shutil.which("nft"), "nft is missing: ./dev.sh test installs nftables"
    topo = with_pods(exercise(), (("httpbin2", "worker1", "httpbin"),))
    web = ServiceSpec(name="web", namespace="default", cluster_ip=WEB_IP, endpoints=("httpbin", "httpbin2"),
                      ports=(ServicePort(name="http", protocol="tcp", port=80, target_port=80),))
    store = make_store("n" + secrets.token_hex(2))
    built = up(dataclasses.replace(topo, services=(*topo.services, web), kube_proxy="nftables"), store=store)
    try:
        yield built
    finally:
        down(store)


def nft(lab, node: str = "worker1") -> str:
    return ns_run(lab.node(node).netns, "nft", "list", "table", "ip", "kube-proxy")


def test_the_table_is_kube_proxy_s_and_the_nat_table_has_no_kube_chains(lab) -> None:
    text = nft(lab)
    httpbin = lab.pod("httpbin")
    svc = next(s for s in lab.topology.services if s.name == "httpbin")
    chain = nft_service_chain(svc, svc.ports[0])
    assert f"10.152.183.50 . tcp . 80 : goto {chain}" in text
    assert f"meta l4proto tcp dnat to {httpbin.ip}:80" in text
    assert re.search(r"numgen random mod 2 vmap \{ 0 : goto endpoint-\S+, 1 : goto endpoint-\S+ \}", text)
    assert text == nft(lab, "worker2")  # (the same on every node)
    dns = lab.pod("coredns")
    assert "10.152.183.10 . udp . 53 : goto " in text and f"meta l4proto udp dnat to {dns.ip}:53" in text
    assert "KUBE-" not in ns_run(lab.node("worker1").netns, "iptables-save", "-t", "nat")
    status = json.loads(run_tracer("lab", "status", "-o", "json", store=lab.store, check=True).stdout)
    assert status["kube_proxy"] == "nftables"


def test_requests_by_name_go_through_the_nftables_dnat(lab) -> None:
    out = run_tracer("lab", "exec", "curl", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                     "http://httpbin/get", store=lab.store, check=True)
    assert out.stdout == "200"  # (the name by the cluster DNS, itself behind the DNAT of 10.152.183.10)
    entries = ns_run(lab.node("worker1").netns, "conntrack", "-L", "-p", "tcp", "--orig-dst", "10.152.183.50")
    assert f"src={lab.pod('httpbin').ip}" in entries


def test_path_names_the_rule_as_nft_lists_it(lab) -> None:
    doc = json.loads(run_tracer("path", "curl", "svc/httpbin", "-o", "json", store=lab.store, check=True).stdout)
    rule = doc["service"]["rule"]
    httpbin = lab.pod("httpbin")
    service, _, rest = rule.partition(" -> ")
    endpoint, _, dnat = rest.partition(": ")
    assert dnat == f"dnat to {httpbin.ip}:80"
    text = nft(lab)
    # read back independently: the element's target, and the chain holding that dnat
    assert re.search(rf"10\.152\.183\.50 \. tcp \. 80 : goto {re.escape(service)}\b", text)
    block = text.split(f"chain {endpoint} {{", 1)[1].split("}", 1)[0]
    assert f"dnat to {httpbin.ip}:80" in block


def test_a_service_with_two_endpoints_shows_each_flow_s_endpoint_and_the_numgen(lab) -> None:
    proc = run_tracer("follow", "curl", "svc/web", "--count", "16", "-o", "json", store=lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [c["status"] for c in doc["follow"]["curl"]] == [200] * 16
    ips = {lab.pod(n).ip: n for n in ("httpbin", "httpbin2")}
    flows = [f for f in doc["flows"] if f["protocol"] == "tcp"]
    taken = {ips[f["nat"]["translated"].rsplit(":", 1)[0]] for f in flows if f["nat"]["original"] == f"{WEB_IP}:80"}
    assert taken == {"httpbin", "httpbin2"}  # (each with 1/2: both, but once in 2**15 runs)
    text = run_tracer("follow", "curl", "svc/web", store=lab.store, check=True).stdout
    assert "an endpoint chain per endpoint, one taken by numgen random (nft list table ip kube-proxy)" in text

