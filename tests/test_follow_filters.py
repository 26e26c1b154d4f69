"""The kernel filters `tracer follow` gives its agents, checked by libpcap on the sample captures."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from factories import CURL_MAC, arp, eth, geneve, ipv4, pcap_bytes, tcp, udp, vxlan
from tracer.cluster.filters import capture_plan, flow_filter, point_filter, underlay_filter

SAMPLES = Path(__file__).resolve().parents[1] / "pcaps" / "http-get"
CURL, HTTPBIN = "172.18.166.139", "172.18.104.14"
CALI, GATEWAY = "ee:ee:ee:ee:ee:ee", "169.254.1.1"


def way(src=CURL, dst=HTTPBIN):
    """Just what the filters read of a discovered Way."""
    pod = lambda ip: SimpleNamespace(pod=SimpleNamespace(ip=ip))  # noqa: E731
    point = lambda node, iface, role: SimpleNamespace(node=node, interface=iface, role=role, asked=False)  # noqa: E731
    return SimpleNamespace(
        src=pod(src), dst=pod(dst), service=None,
        tunnel=SimpleNamespace(udp_port=4789, src_node_ip="192.168.56.11", dst_node_ip="192.168.56.12",
                               encapsulation="vxlan"),
        points=(point("worker1", "cali35e3a5cb80b", "pod-veth"), point("worker1", "vxlan.calico", "tunnel"),
                point("worker1", "eth1", "underlay"), point("worker2", "eth1", "underlay"),
                point("worker2", "vxlan.calico", "tunnel"), point("worker2", "cali4a3c027cd7f", "pod-veth")),
    )


def pod_veth_filter(w, port: int) -> str:
    return point_filter(w.points[0], w, port)


def matches(pcap: Path, bpf: str) -> int:
    out = subprocess.run(["tcpdump", "-n", "-r", str(pcap), bpf], capture_output=True, text=True, check=True)
    return sum(1 for line in out.stdout.splitlines() if line[:1].isdigit())  # inner headers get a line too


def test_the_plan_is_each_node_s_points_in_the_order_of_the_way():
    plan = capture_plan(way(), 80)
    assert {n: [c.interface for c in cs] for n, cs in plan.items()} == {
        "worker1": ["cali35e3a5cb80b", "vxlan.calico", "eth1"], "worker2": ["eth1", "vxlan.calico", "cali4a3c027cd7f"]}
    assert plan["worker1"][2].bpf == underlay_filter(way(), 80)
    assert plan["worker1"][0].bpf == pod_veth_filter(way(), 80)
    assert plan["worker1"][1].bpf == flow_filter(CURL, HTTPBIN, 80)  # (no ARP crosses a tunnel device)


def test_a_pod_veth_filter_keeps_the_flow_and_the_pods_arp_only(tmp_path):
    """libpcap (tcpdump -r) on built frames: the flow, both pods' ARP (asked by, asked for), and
    nothing of another pod or another port."""
    other = "172.18.166.140"
    frames = {
        "syn": eth(CURL_MAC, CALI, 0x0800, ipv4(CURL, HTTPBIN, 6, tcp(45688, 80))),
        "other port": eth(CURL_MAC, CALI, 0x0800, ipv4(CURL, HTTPBIN, 6, tcp(45688, 8080))),
        "who-has gw": eth(CURL_MAC, "ff:ff:ff:ff:ff:ff", 0x0806, arp(1, CURL_MAC, CURL, "00:00:00:00:00:00", GATEWAY)),
        "proxy-arp": eth(CALI, CURL_MAC, 0x0806, arp(2, CALI, GATEWAY, CURL_MAC, CURL)),
        "node asks for httpbin": eth(CALI, "ff:ff:ff:ff:ff:ff", 0x0806,
                                     arp(1, CALI, "192.168.56.12", "00:00:00:00:00:00", HTTPBIN)),
        "another pod's arp": eth(CURL_MAC, "ff:ff:ff:ff:ff:ff", 0x0806,
                                 arp(1, CURL_MAC, other, "00:00:00:00:00:00", GATEWAY)),
    }
    keep = {"syn", "who-has gw", "proxy-arp", "node asks for httpbin"}
    for name, frame in frames.items():
        pcap = tmp_path / "one.pcap"
        pcap.write_bytes(pcap_bytes([frame]))
        assert matches(pcap, pod_veth_filter(way(), 80)) == (name in keep), name


def test_to_a_service_the_pod_veth_filter_keeps_its_cluster_ip_too(tmp_path):
    """Before kube-proxy's DNAT (and in the reply after conntrack's un-DNAT) the pod's packets
    carry the ClusterIP: kept, as the endpoint's are; another ClusterIP or port is not."""
    w = way()
    w.service = SimpleNamespace(cluster_ip="10.152.183.50", port=8000)
    frames = {
        "syn to the service": ipv4(CURL, "10.152.183.50", 6, tcp(45688, 8000)),
        "its answer": ipv4("10.152.183.50", CURL, 6, tcp(8000, 45688, flags=0x12)),
        "syn to the endpoint": ipv4(CURL, HTTPBIN, 6, tcp(45688, 80)),
        "another service": ipv4(CURL, "10.152.183.51", 6, tcp(45688, 8000)),
        "the service's other port": ipv4(CURL, "10.152.183.50", 6, tcp(45688, 80)),
    }
    keep = {"syn to the service", "its answer", "syn to the endpoint"}
    for name, packet in frames.items():
        pcap = tmp_path / "one.pcap"
        pcap.write_bytes(pcap_bytes([eth(CURL_MAC, CALI, 0x0800, packet)]))
        assert matches(pcap, point_filter(w.points[0], w, 80)) == (name in keep), name


@pytest.mark.parametrize("point", ["worker1/eth1", "worker2/eth1"])
def test_the_underlay_filter_keeps_exactly_the_flow_inside_the_vxlan(point):
    pcap = SAMPLES / f"{point}.pcap"
    assert matches(pcap, underlay_filter(way(), 80)) == matches(pcap, "udp port 4789") == 12
    assert matches(pcap, underlay_filter(way(), 8080)) == 0  # another port of the same pods
    assert matches(pcap, underlay_filter(way(CURL, "172.18.104.15"), 80)) == 0  # another pod


NODE1, NODE2 = "192.168.56.11", "192.168.56.12"


def _tunnel_way(encapsulation: str, port: int | None):
    w = way()
    w.tunnel = SimpleNamespace(udp_port=port, src_node_ip=NODE1, dst_node_ip=NODE2, encapsulation=encapsulation)
    return w


def _inner(src=CURL, dst=HTTPBIN, dport=80) -> bytes:
    return ipv4(src, dst, 6, tcp(45688, dport))


@pytest.mark.parametrize("encapsulation,port,outer", [
    ("vxlan", 8472, lambda inner: ipv4(NODE1, NODE2, 17, udp(40000, 8472, vxlan(1, eth(CURL_MAC, CALI, 0x0800, inner))))),
    # Geneve with 8 bytes of options: the inner headers sit further in, and the filter follows them
    ("geneve", 6081, lambda inner: ipv4(NODE1, NODE2, 17, udp(40000, 6081, geneve(
        4242, eth(CURL_MAC, CALI, 0x0800, inner), options=bytes.fromhex("0102030400000000"))))),
    ("ipip", None, lambda inner: ipv4(NODE1, NODE2, 4, inner)),
    ("none", None, lambda inner: inner),
])
def test_the_underlay_filter_of_each_encapsulation(tmp_path, encapsulation, port, outer):
    """libpcap on crafted frames: the flow inside the tunnel (either way round) passes; another
    pod, another port, another tunnel port do not."""
    w = _tunnel_way(encapsulation, port)
    bpf = underlay_filter(w, 80)
    cases = {
        "the flow": (outer(_inner()), True),
        "its reply": (outer(ipv4(HTTPBIN, CURL, 6, tcp(80, 45688, flags=0x12))), True),
        "another pod": (outer(_inner(dst="172.18.104.15")), False),
        "another port": (outer(_inner(dport=8080)), False),
    }
    if port:  # the same tunnel on another UDP port is another tunnel
        other = ipv4(NODE1, NODE2, 17, udp(40000, 4789, vxlan(1, eth(CURL_MAC, CALI, 0x0800, _inner()))))
        cases["another tunnel port"] = (other, False)
    for name, (packet, keep) in cases.items():
        pcap = tmp_path / "one.pcap"
        pcap.write_bytes(pcap_bytes([eth("52:54:00:00:56:0b", "52:54:00:00:56:0c", 0x0800, packet)]))
        assert matches(pcap, bpf) == (1 if keep else 0), (encapsulation, name, bpf)
