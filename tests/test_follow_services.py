"""follow and path take what users type (issue "Services and names", item 2, on the lab): a
Service as `svc/NAME`, its ClusterIP, or a URL by name (resolved by the source pod's own
resolver through the cluster DNS). The way is the one to the Service's endpoint; the view shows
kube-proxy's DNAT between the points where it happened, and the rule that did it, which must
be the KUBE-SEP chain of the node's real nat table."""

from __future__ import annotations

import json

import pytest

from conftest import ns_run, run_tracer
from tracer.cluster.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _rule(lab: Lab) -> str:
    """The DNAT to httpbin in worker1's nat table, as iptables-save prints it."""
    httpbin = lab.pod("httpbin")
    saved = ns_run(lab.node("worker1").netns, "iptables-save", "-t", "nat").splitlines()
    sep = next(line.split()[1] for line in saved if line.endswith(f"-j DNAT --to-destination {httpbin.ip}:80"))
    svc = next(line.split()[1] for line in saved if line.startswith("-A KUBE-SVC-") and line.endswith(f"-j {sep}"))
    return f"{svc} -> {sep}: DNAT --to-destination {httpbin.ip}:80"


@pytest.mark.parametrize("dst", ["http://httpbin/get", "http://httpbin.default.svc.cluster.local./get", "svc/httpbin",
                                 "10.152.183.50"])
def test_follow_a_service_shows_kube_proxy_s_dnat_and_its_rule(lab: Lab, dst: str) -> None:
    proc = run_tracer("follow", "curl", dst, "-o", "json", store=lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    follow = doc["follow"]
    assert follow["curl"][0]["status"] == 200
    assert follow["url"] == (dst if dst.startswith("http") else "http://10.152.183.50:80/get")
    assert follow["service"]["cluster_ip"] == "10.152.183.50" and follow["service"]["rule"] == _rule(lab)
    curl, httpbin = lab.pod("curl"), lab.pod("httpbin")
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    assert flow["nat"] == {"original": "10.152.183.50:80", "translated": f"{httpbin.ip}:80", "kind": "dnat",
                           "point": "worker1/vxlan.calico", "previous_point": f"worker1/{curl.host_veth}"}
    syn = next(p for p in flow["packets"] if p["tcp_flags"] == "S")
    assert syn["hops"][0]["ip_dst"] == "10.152.183.50" and syn["hops"][-1]["ip_dst"] == httpbin.ip
    assert syn["missing"] == [] and len(syn["hops"]) == 6
    synack = next(p for p in flow["packets"] if p["tcp_flags"] == "SA")
    assert synack["hops"][-1]["ip_src"] == "10.152.183.50"  # (conntrack's un-DNAT on the way back into curl)
    text = run_tracer("follow", "curl", dst, store=lab.store, check=True).stdout
    assert "Service default/httpbin 10.152.183.50:80 -> endpoint httpbin" in text
    assert f"kube-proxy on worker1: {_rule(lab)}" in text


def test_path_of_a_service_explains_the_dnat_before_anything_is_sent(lab: Lab) -> None:
    doc = json.loads(run_tracer("path", "curl", "svc/httpbin", "-o", "json", store=lab.store, check=True).stdout)
    assert doc["dst"]["name"] == "httpbin" and doc["service"]["rule"] == _rule(lab)
    text = run_tracer("path", "curl", "http://httpbin/get", store=lab.store, check=True).stdout
    assert "addressed to Service default/httpbin 10.152.183.50:80: kube-proxy on worker1 DNATs it" in text


@pytest.mark.parametrize("dst,code,says", [
    ("http://nosuch/", 4, "no Service of the lab has the name default/nosuch"),
    ("10.152.183.99", 4, "no Service of the lab has ClusterIP 10.152.183.99"),
    ("https://httpbin/", 2, "tracer follows http:// URLs"),
    ("http://a.b.c/", 2, "a.b.c: not a Service's name"),
    ("http://httpbin:8080/get", 2, "Service default/httpbin has port 80, not 8080"),
    ("http://httpbin:x/get", 2, "not a port"),
])
def test_what_is_no_service_says_so(lab: Lab, dst: str, code: int, says: str) -> None:
    proc = run_tracer("follow", "curl", dst, store=lab.store)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and says in proc.stderr


def test_the_rule_is_the_one_of_the_service_s_protocol_and_port(lab: Lab) -> None:
    """kube-dns has a UDP and a TCP port 53 to the same endpoint: the rule named is the TCP one's."""
    from tracer.app.target import request_way
    from tracer.cluster.lab.kube_proxy import sep_chain, svc_chain

    svc = next(s for s in lab.topology.services if s.name == "kube-dns")
    tcp = next(p for p in svc.ports if p.protocol == "tcp")
    way = request_way(lab.backend(), "curl", "svc/kube-system/kube-dns", 80, "/").way
    dns = lab.pod("coredns")
    assert way.dst.pod.name == "coredns" and way.service is not None
    assert way.service.rule == (f"{svc_chain(svc, tcp)} -> {sep_chain(svc, tcp, f'{dns.ip}:53')}: "
                                f"DNAT --to-destination {dns.ip}:53")



def test_a_url_by_name_shows_the_dns_exchange_across_the_tunnel_to_the_dns_pod(lab: Lab, tmp_path) -> None:
    """The pod's resolver asks kube-dns (10.152.183.10), kube-proxy DNATs the query to the DNS
    pod on worker2: the captures cover that pod's veth too, the DNS flow shows the query and the
    answer at every point of its way, its DNAT, and the HTTP flow the name that gave its address."""
    proc = run_tracer("follow", "curl", "http://httpbin/get", "-o", "json", "--save", str(tmp_path / "run"), store=lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    dns_pod, curl = lab.pod("coredns"), lab.pod("curl")
    lookups = [f for f in doc["flows"] if f["protocol"] == "udp"]  # (one socket for A and AAAA, or one each)
    assert lookups
    for dns in lookups:
        assert dns["nat"]["original"] == "10.152.183.10:53" and dns["nat"]["translated"] == f"{dns_pod.ip}:53"
        assert dns["nat"]["previous_point"] == f"worker1/{curl.host_veth}"
        assert dns["summary"]["reached_end"] == dns["summary"]["packets"] >= 2
        way = dns["summary"]["way"]["request"]
        assert way[0] == f"worker1/{curl.host_veth}" and way[-1] == f"worker2/{dns_pod.host_veth}"
    answers = [p["dns"] for f in lookups for p in f["packets"]
               if p["dns"] and p["dns"]["response"] and p["dns"]["type"] == "A"]
    assert answers and answers[0]["name"] == "httpbin.default.svc.cluster.local"
    assert answers[0]["answers"] == ["A 10.152.183.50"] and answers[0]["rcode"] == "NOERROR"
    [http] = [f for f in doc["flows"] if f["protocol"] == "tcp"]
    assert http["dns_name"] == "httpbin.default.svc.cluster.local" and http["summary"]["reached_end"] == 12
    # saved: path.json names the DNS query's way; analyze shows the same flows (the DNS one by default too)
    saved = json.loads((tmp_path / "run" / "path.json").read_text())["dns"]
    assert (saved["cluster_ip"], saved["pod"]) == ("10.152.183.10", "coredns")
    assert (saved["service"]["namespace"], saved["service"]["name"]) == ("kube-system", "kube-dns")
    again = json.loads(run_tracer("analyze", str(tmp_path / "run"), "-o", "json", store=lab.store, check=True).stdout)
    assert [(f["protocol"], f["summary"]["reached_end"]) for f in again["flows"]] == \
        [(f["protocol"], f["summary"]["reached_end"]) for f in doc["flows"]]
    text = run_tracer("analyze", str(tmp_path / "run"), "--view", "grid", store=lab.store, check=True).stdout
    assert "DNAT 10.152.183.10:53 -> " in text and "(coredns)" in text


def test_path_of_a_url_by_name_explains_the_lookup_first(lab: Lab) -> None:
    doc = json.loads(run_tracer("path", "curl", "http://httpbin/get", "-o", "json", store=lab.store, check=True).stdout)
    dns_pod = lab.pod("coredns")
    assert doc["dns"]["cluster_ip"] == "10.152.183.10" and doc["dns"]["dst"]["ip"] == dns_pod.ip
    assert doc["dns"]["points"][-1]["id"] == f"worker2/{dns_pod.host_veth}"
    text = run_tracer("path", "curl", "http://httpbin/get", store=lab.store, check=True).stdout
    assert text.startswith("First the name: curl's resolver asks 10.152.183.10:53 (Service kube-system/kube-dns")
    # by address, no lookup: no DNS way
    assert "dns" not in json.loads(run_tracer("path", "curl", "svc/httpbin", "-o", "json", store=lab.store, check=True).stdout)


def test_a_request_by_name_that_stops_on_the_first_node_keeps_its_own_way(lab: Lab) -> None:
    """Dropped as it comes in from curl (a policy on worker1): the SYN passed only the points the
    request's way and the lookup's share, and it is still the request's way that it is shown on
    (stopped before httpbin's veth, not before the DNS pod's)."""
    curl, httpbin = lab.pod("curl"), lab.pod("httpbin")
    rule = ["FORWARD", "-i", curl.host_veth, "-p", "tcp", "--dport", "80", "-j", "DROP"]
    ns_run(lab.node("worker1").netns, "iptables", "-I", *rule)
    try:
        proc = run_tracer("follow", "curl", "http://httpbin/get", "--timeout", "2", "-o", "json", store=lab.store)
    finally:
        ns_run(lab.node("worker1").netns, "iptables", "-D", *rule)
    assert proc.returncode == 7, proc.stderr
    doc = json.loads(proc.stdout)
    [http] = [f for f in doc["flows"] if f["protocol"] == "tcp"]
    assert http["summary"]["way"]["request"][-1] == f"worker2/{httpbin.host_veth}"
    assert http["summary"]["stopped"] == {f"worker1/{curl.host_veth}": http["summary"]["packets"]}
    assert all(f["summary"]["reached_end"] == f["summary"]["packets"]  # (the lookup went through)
               for f in doc["flows"] if f["protocol"] == "udp")
