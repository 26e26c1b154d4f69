"""The lab's kube-proxy and cluster DNS (issue "Services and names", item 1): every node's nat
table as kube-proxy's iptables mode writes it, a real DNS server (dnsmasq) in a pod of its own
on the other node than curl, the resolv.conf kubelet writes, requests by name as in a cluster;
the conntrack tool reads the kernel's NAT entries. (Every --cni: tests/test_lab_cnis.py.)"""

from __future__ import annotations

import dataclasses
import re

import pytest

from conftest import ns_run, run_tracer
from tracer.cluster.lab import Lab
from tracer.cluster.lab.kube_proxy import nat_table, sep_chain, svc_chain
from tracer.cluster.lab.topology import ServicePort, ServiceSpec, exercise, with_pods

pytestmark = [pytest.mark.root]


def lab_exec(lab: Lab, *argv: str, check: bool = True):
    return run_tracer("lab", "exec", *argv, store=lab.store, check=check)


def test_chain_names_are_kube_proxy_s() -> None:
    # recomputed from kube-proxy's servicePortChainName (DATAPATHS.md §7)
    svc = ServiceSpec(name="svc1", namespace="ns1", cluster_ip="172.30.0.41", endpoints=(),
                      ports=(ServicePort(name="p80", protocol="tcp", port=80, target_port=80),))
    assert svc_chain(svc, svc.ports[0]) == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert sep_chain(svc, svc.ports[0], "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_several_endpoints_get_kube_proxy_s_probabilities() -> None:
    topo = with_pods(exercise(), (("httpbin2", "worker1", "httpbin"), ("httpbin3", "worker2", "httpbin")))
    svc = ServiceSpec(name="web", namespace="default", cluster_ip="10.152.183.60", endpoints=("httpbin", "httpbin2", "httpbin3"),
                      ports=(ServicePort(name="http", protocol="tcp", port=80, target_port=80),))
    text = nat_table(dataclasses.replace(topo, services=(svc,)))
    jumps = [line for line in text.splitlines() if line.startswith(f"-A {svc_chain(svc, svc.ports[0])} -m comment")]
    chances = [m.group(1) if (m := re.search(r"--probability (\S+)", line)) else None for line in jumps]
    assert chances == ["0.3333333333", "0.5000000000", None]  # (1/(N-i); the last rule takes the rest)
    assert [line.rsplit(" -j ", 1)[1] for line in jumps] == [
        sep_chain(svc, svc.ports[0], f"{p.ip}:80") for name in svc.endpoints for p in topo.pods if p.name == name]


def test_requests_by_name_as_in_a_cluster(lab: Lab) -> None:
    for name in ("httpbin", "httpbin.default", "httpbin.default.svc", "httpbin.default.svc.cluster.local"):
        out = lab_exec(lab, "curl", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{name}/get")
        assert out.stdout == "200", name
    resolved = lab_exec(lab, "curl", "--", "getent", "ahostsv4", "kube-dns.kube-system.svc.cluster.local").stdout
    assert resolved.split()[0] == "10.152.183.10"
    unknown = lab_exec(lab, "curl", "--", "curl", "-s", "http://nosuch/", check=False)
    assert unknown.returncode == 6  # (curl: could not resolve host: the DNS said NXDOMAIN)
    assert lab_exec(lab, "curl", "--", "cat", "/etc/resolv.conf").stdout == (
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.152.183.10\noptions ndots:5\n")
    # the query was served by the DNS pod on worker2 (its own log), through the Service's DNAT
    dns = lab.pod("coredns")
    assert dns.node == "worker2" and dns.ip in lab_exec(lab, "worker1", "--", "conntrack", "-L", "-p", "udp", "--dport",
                                                       "53").stdout


def test_the_nat_table_reads_like_a_real_node_s(lab: Lab) -> None:
    saved = ns_run(lab.node("worker1").netns, "iptables-save", "-t", "nat")
    httpbin = lab.pod("httpbin")
    svc = next(s for s in lab.topology.services if s.name == "httpbin")
    svc_c, sep_c = svc_chain(svc, svc.ports[0]), sep_chain(svc, svc.ports[0], f"{httpbin.ip}:80")
    for rule in ('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                 f'-A KUBE-SERVICES -d 10.152.183.50/32 -p tcp -m tcp --dport 80 -m comment --comment '
                 f'"default/httpbin:http cluster IP" -j {svc_c}',
                 f'-A {svc_c} -m comment --comment "default/httpbin:http -> {httpbin.ip}:80" -j {sep_c}',
                 f'-A {sep_c} -p tcp -m comment --comment "default/httpbin:http" -m tcp -j DNAT --to-destination '
                 f'{httpbin.ip}:80',
                 '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE '
                 '--random-fully'):
        assert rule in saved.splitlines(), rule
    def rules(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("#")]

    assert rules(saved) == rules(ns_run(lab.node("worker2").netns, "iptables-save", "-t", "nat"))  # (the same everywhere)


def test_conntrack_shows_the_clusterip_dnat_and_its_reply(lab: Lab) -> None:
    curl, httpbin = lab.pod("curl"), lab.pod("httpbin")
    out = lab_exec(lab, "curl", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://10.152.183.50/get")
    assert out.stdout == "200"
    entries = lab_exec(lab, "worker1", "--", "conntrack", "-L", "-p", "tcp", "--orig-dst", "10.152.183.50").stdout
    assert f"src={curl.ip} dst=10.152.183.50" in entries and f"src={httpbin.ip} dst={curl.ip} sport=80" in entries
