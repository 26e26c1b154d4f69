"""analyze decodes DNS (issue "Services and names", item 4): each query's name and type, each
answer's records and response code, in the packet's JSON (`dns`) and its words in the views,
and links a connection to the answer that named its address (the flow's `dns_name`).
Checked against tshark's dissector on the same bytes: third-party captures with DNS in them, and
the lab's real cluster DNS (dnsmasq) answering curl's resolver (a name of the cluster, another
search form, one it does not have), captured by tcpdump on curl's veth."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_tracer
from factories import PUBLIC, analyze_json, needs_tshark, tshark_lines
from tracer.cluster.lab import Lab
from tracer.decode import dns

FIELDS = ("dns.id", "dns.flags.response", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.a", "dns.aaaa")
TYPE_NUMBERS = {v: k for k, v in dns.TYPES.items()}
RCODE_NUMBERS = {v: k for k, v in dns.RCODES.items()}


def tracer_dns(doc: dict) -> list[tuple]:
    out = []
    for f in doc["flows"]:
        for p in f.get("packets", []):
            d = p["dns"]
            if d is not None:
                addrs = [a.split(" ", 1)[1] for a in d["answers"] if a.split(" ", 1)[0] in ("A", "AAAA")]
                qtype = TYPE_NUMBERS.get(d["type"]) or int(d["type"].removeprefix("TYPE"))
                out.append((d["id"], d["response"], d["name"], qtype,
                            RCODE_NUMBERS[d["rcode"]] if d["response"] else None, tuple(sorted(addrs))))
    return sorted(out, key=lambda t: (t[0], t[1]))


def tshark_dns(path: Path) -> list[tuple]:
    out = []
    for line in tshark_lines(path, "-Y", "dns", "-T", "fields", *(a for f in FIELDS for a in ("-e", f))):
        ident, response, name, qtype, rcode, a, aaaa = (line.split("\t") + [""] * 7)[:7]
        addrs = tuple(sorted(x for x in (a.split(",") + aaaa.split(",")) if x))
        out.append((int(ident, 16), response in ("1", "True"), name, int(qtype),
                    int(rcode) if response in ("1", "True") else None, addrs))
    return sorted(out, key=lambda t: (t[0], t[1]))


PUBLIC_WITH_DNS = [p for p in (PUBLIC / "zeek-pcapng-multi-interface.pcapng", PUBLIC / "zeek-gre-sample.pcap")
                   if p.exists()]


@needs_tshark
@pytest.mark.parametrize("path", PUBLIC_WITH_DNS, ids=lambda p: p.name)
def test_public_dns_agrees_with_tshark(path: Path, capsys) -> None:
    got = tracer_dns(analyze_json(capsys, str(path), "--all-flows"))
    # (tracer's are packets, tshark's frames: a packet seen twice, e.g. inside and outside a tunnel, is one)
    assert got and set(got) == set(tshark_dns(path))


def test_a_cut_or_odd_payload_is_no_crash() -> None:
    query = bytes.fromhex("4fe8 0100 0001 0000 0000 0000 03777777 056170706c65 03636f6d 00 0001 0001")
    msg = dns.parse(query)
    assert msg is not None and (msg.name, msg.type, msg.response) == ("www.apple.com", "A", False)
    for cut in range(len(query)):
        dns.parse(query[:cut])  # (never raises)
    loop = bytes.fromhex("0001 8180 0001 0001 0000 0000 c00c 0001 0001")  # a name pointing at itself
    assert dns.parse(loop) is None
    answer = query[:2] + b"\x81\x80" + query[4:6] + b"\x00\x05" + query[8:]  # five answers promised, none there
    cut = dns.parse(answer)
    assert cut is not None and cut.truncated and cut.answers == ()


@pytest.mark.root
@pytest.mark.slow
@needs_tshark
def test_the_lab_s_cluster_dns_as_tracer_and_tshark_read_it(lab: Lab, tmp_path: Path) -> None:
    pcap = tmp_path / "curl-veth.pcap"
    node = lab.node("worker1")
    tcpdump = subprocess.Popen(["ip", "netns", "exec", node.netns, "tcpdump", "-i", lab.pod("curl").host_veth, "-U", "--immediate-mode",
                                "-w", str(pcap), "udp port 53 or tcp port 80"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while not pcap.exists() or pcap.stat().st_size < 24:
            assert time.monotonic() < deadline, "tcpdump did not start"
            time.sleep(0.02)
        for url in ("http://httpbin/get", "http://httpbin.default/get", "http://nosuch/"):
            run_tracer("lab", "exec", "curl", "--", "curl", "-s", "-o", "/dev/null", url, store=lab.store)
        time.sleep(0.2)
    finally:
        tcpdump.terminate()
        tcpdump.wait(5)
    doc = json.loads(run_tracer("analyze", str(pcap), "--all-flows", "-o", "json", store=lab.store, check=True).stdout)
    got = tracer_dns(doc)
    assert got == tshark_dns(pcap)
    answers = {(name, qtype): (rcode, addrs) for _, response, name, qtype, rcode, addrs in got if response}
    assert answers[("httpbin.default.svc.cluster.local", 1)] == (0, ("10.152.183.50",))
    assert answers[("nosuch.default.svc.cluster.local", 1)][0] == 3  # NXDOMAIN: cluster.local is the DNS's own
    # (the search path: httpbin.default was tried as httpbin.default.default.svc.cluster.local first)
    assert answers[("httpbin.default.default.svc.cluster.local", 1)][0] == 3
    grid = run_tracer("analyze", str(pcap), "--all-flows", store=lab.store, check=True).stdout
    assert "DNS A? httpbin" in grid and "DNS NXDOMAIN nosuch" in grid  # (the grid cuts a long label)
    # each connection linked to the answer that named its address (the ClusterIP, before the DNAT)
    conns = [f for f in doc["flows"] if f["protocol"] == "tcp"]
    assert len(conns) == 2 and all(f["server"] == "10.152.183.50:80" for f in conns)
    assert [f["dns_name"] for f in conns] == ["httpbin.default.svc.cluster.local"] * 2
    assert "httpbin.default.svc.cluster.local: the address a DNS answer gave before it" in grid
    hops = run_tracer("analyze", str(pcap), "--all-flows", "--view", "hops", store=lab.store, check=True).stdout
    assert "DNS A httpbin.default.svc.cluster.local = 10.152.183.50 10.152.183.10:53 -> 172.18.166.139:" in hops


def test_the_dns_service_sample_shows_the_lookup_on_its_own_way(capsys) -> None:
    """pcaps/dns-service (record.py: curl http://httpbin/get on the lab, the DNS pod's veth and
    eth0 captured too, path.json's `dns` the query's way): the lookup DNAT-ed to the DNS pod
    across the tunnel, every packet at all eight points of its way, the HTTP flow named by it."""
    from factories import SAMPLES, analyze_json

    doc = analyze_json(capsys, str(SAMPLES / "dns-service"))
    [dns] = [f for f in doc["flows"] if f["protocol"] == "udp"]
    assert dns["nat"]["original"] == "10.152.183.10:53" and dns["server"] == "172.18.104.62:53"
    assert dns["summary"]["way"]["request"][-1] == "coredns/eth0" and len(dns["summary"]["way"]["request"]) == 8
    assert dns["summary"]["reached_end"] == dns["summary"]["packets"] == len(dns["packets"])
    assert any(p["dns"]["answers"] == ["A 10.152.183.50"] for p in dns["packets"] if p["dns"]["response"])
    [http] = [f for f in doc["flows"] if f["protocol"] == "tcp"]
    assert http["dns_name"] == "httpbin.default.svc.cluster.local" and http["summary"]["way"]["request"][-1] == "httpbin/eth0"
