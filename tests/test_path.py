"""`tracer path` against the lab's live state: the points, in order, with the kernel's MACs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest

from conftest import ip_json, make_store, ns_run, run_tracer
from tracer.cluster.discover import discover
from tracer.cluster.lab import Lab, down, exercise, up
from tracer.cluster.lab.topology import PodSpec, pod_mac

pytestmark = pytest.mark.root


def mac_of(ns: str, dev: str) -> str:
    return ip_json(ns, "link", "show", "dev", dev)[0]["address"]


def ifindex_of(ns: str, dev: str) -> int:
    return ip_json(ns, "link", "show", "dev", dev)[0]["ifindex"]


@pytest.fixture(scope="module")
def path_json(lab: Lab) -> dict:
    return json.loads(run_tracer("path", "curl", "httpbin", "--output", "json", store=lab.store, check=True).stdout)


def test_points_in_order_match_the_kernel(lab: Lab, path_json: dict) -> None:
    w1, w2 = lab.node("worker1"), lab.node("worker2")
    cali_curl, cali_httpbin = lab.pod("curl").host_veth, lab.pod("httpbin").host_veth
    expected = [
        (f"worker1/{cali_curl}", "pod-veth", "ingress", w1.netns, cali_curl),
        ("worker1/vxlan.calico", "tunnel", "egress", w1.netns, "vxlan.calico"),
        ("worker1/eth1", "underlay", "egress", w1.netns, "eth1"),
        ("worker2/eth1", "underlay", "ingress", w2.netns, "eth1"),
        ("worker2/vxlan.calico", "tunnel", "ingress", w2.netns, "vxlan.calico"),
        (f"worker2/{cali_httpbin}", "pod-veth", "egress", w2.netns, cali_httpbin),
    ]
    points = path_json["points"]
    assert [(p["id"], p["role"], p["direction"]) for p in points] == [e[:3] for e in expected]
    for p, (_, _, _, ns, dev) in zip(points, expected):
        assert (p["mac"], p["ifindex"]) == (mac_of(ns, dev), ifindex_of(ns, dev)), p["id"]
        assert p["node"] + "/" + p["interface"] == p["id"]
        assert p["explanation"].endswith(".")


def test_expected_frames_follow_the_table(lab: Lab, path_json: dict) -> None:
    """L2 source -> destination per point, as in CALICO-DATAPATH.md's six-point table."""
    curl, httpbin = lab.pod("curl"), lab.pod("httpbin")
    w1, w2 = lab.node("worker1"), lab.node("worker2")
    frames = [(p["eth_src"], p["eth_dst"]) for p in path_json["points"]]
    assert frames == [
        (curl.mac, "ee:ee:ee:ee:ee:ee"),
        (w1.tunnel_mac, w2.tunnel_mac),
        (w1.underlay_mac, w2.underlay_mac),
        (w1.underlay_mac, w2.underlay_mac),
        (w1.tunnel_mac, w2.tunnel_mac),
        ("ee:ee:ee:ee:ee:ee", httpbin.mac),
    ]


def test_steps_3_1_to_3_4_and_tunnel_facts(lab: Lab, path_json: dict) -> None:
    src, dst = path_json["src"], path_json["dst"]
    curl_ns = lab.pod("curl").netns
    assert path_json["schema"] == "tracer.path/v1"
    assert src["route"] == "172.18.104.14 via 169.254.1.1 dev eth0 src 172.18.166.139"
    assert src["iflink"] == ip_json(curl_ns, "link", "show", "dev", "eth0")[0]["link_index"]
    assert src["host_veth"] == lab.pod("curl").host_veth
    assert (src["gateway"], src["gateway_mac"], src["proxy_arp"], src["proxy_delay"]) == (
        "169.254.1.1", "ee:ee:ee:ee:ee:ee", 1, 0)
    assert dst["node_route"] == f"172.18.104.14 dev {lab.pod('httpbin').host_veth} scope link"
    assert (path_json["vni"], path_json["udp_port"]) == (4096, 4789)
    assert (path_json["src_node_ip"], path_json["dst_node_ip"]) == ("192.168.56.11", "192.168.56.12")
    assert path_json["tunnel"]["route"] == "172.18.104.0/26 via 172.18.104.0 dev vxlan.calico onlink"
    assert path_json["same_node"] is False
    assert path_json["warnings"] == []


def test_text_output_speaks_the_exercises_terms(lab: Lab) -> None:
    out = run_tracer("path", "curl", "httpbin", store=lab.store, check=True).stdout
    for needle in ("3.1 ip route get 172.18.104.14", "eth0@if", "proxy_arp=1", "Step 4 on worker2",
                   f"6 worker2/{lab.pod('httpbin').host_veth}"):
        assert needle in out


def test_unknown_pod_is_a_clear_error(lab: Lab) -> None:
    proc = run_tracer("path", "curl", "nginx", store=lab.store)
    assert proc.returncode == 4
    assert "no pod 'nginx'" in proc.stderr and "pods: curl, httpbin" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_proxy_arp_off_is_reported(lab: Lab) -> None:
    ns, cali = lab.node("worker1").netns, lab.pod("curl").host_veth
    ns_run(ns, "sysctl", "-q", "-w", f"net.ipv4.conf.{cali}.proxy_arp=0")
    try:
        way = discover(lab.backend(), "curl", "httpbin")
        text = run_tracer("path", "curl", "httpbin", store=lab.store, check=True).stdout
    finally:
        ns_run(ns, "sysctl", "-q", "-w", f"net.ipv4.conf.{cali}.proxy_arp=1")
    assert way.src.proxy_arp == 0
    assert any("proxy_arp is 0" in w for w in way.warnings)
    # the steps name the cause where it bites, and no longer say proxy-ARP makes the veth the next hop
    assert f"3.3 ARP: nobody answers the pod's who-has 169.254.1.1: proxy_arp is 0 on worker1/{cali}" in text
    assert "the request does not leave the pod" in text and f"net.ipv4.conf.{cali}.proxy_arp=1" in text
    assert "makes the host end of the veth pair the next hop" not in text
    assert "makes the host end of the veth pair the next hop" in run_tracer(
        "path", "curl", "httpbin", store=lab.store, check=True).stdout


@pytest.fixture(scope="module")
def same_node_lab() -> Iterator[Lab]:
    """The exercise plus a second client on worker2, next to httpbin."""
    base = exercise()
    client = PodSpec(name="client2", node="worker2", ip="172.18.104.20", mac=pod_mac("172.18.104.20"), app="curl")
    store = make_store("same")
    built = up(dataclasses.replace(base, pods=(*base.pods, client)), store=store)
    try:
        yield built
    finally:
        down(store)


def test_same_node_way_is_the_two_veths(same_node_lab: Lab) -> None:
    lab = same_node_lab
    out = json.loads(run_tracer("path", "client2", "httpbin", "-o", "json", store=lab.store, check=True).stdout)
    assert out["same_node"] is True
    assert [p["id"] for p in out["points"]] == [
        f"worker2/{lab.pod('client2').host_veth}", f"worker2/{lab.pod('httpbin').host_veth}"]
    assert out["vni"] is None
    text = run_tracer("path", "client2", "httpbin", store=lab.store, check=True).stdout
    assert "no tunnel" in text
    res = lab.exec("client2", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://172.18.104.14/status/200"])
    assert res.stdout == b"200"


def test_a_pod_to_itself_is_refused_as_follow_refuses_it(lab):
    proc = run_tracer("path", "httpbin", "httpbin", store=lab.store)
    assert proc.returncode == 2 and "source and destination are the same pod (httpbin)" in proc.stderr, proc.stderr
    assert proc.stdout == ""


class Distroless:
    """The lab's backend, but pods in `pods` have no `cat` and no `ip` (a distroless image):
    exec of them fails as a container runtime says it; everything else is the real lab."""

    def __init__(self, inner, pods: set[str]):
        self.inner, self.pods = inner, pods

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def exec_pod(self, pod, argv):
        from tracer.cluster.ports import ExecResult
        if pod.name in self.pods and argv and argv[0] in ("cat", "ip"):
            return ExecResult(returncode=127, stdout=b"",
                              stderr=f'exec: "{argv[0]}": executable file not found in $PATH'.encode())
        return self.inner.exec_pod(pod, argv)


@pytest.mark.parametrize("pods", [{"httpbin"}, {"curl", "httpbin"}])
def test_a_distroless_pod_is_read_from_its_node(lab: Lab, pods: set[str]) -> None:
    run_tracer("lab", "exec", "curl", "--", "curl", "-s", "-o", "/dev/null", f"http://{lab.pod('httpbin').ip}/get",
               store=lab.store, check=True)  # (the nodes' neighbour entries of both pods, fresh)
    backend = lab.backend()
    normal = discover(backend, "curl", "httpbin")
    way = discover(Distroless(backend, pods), "curl", "httpbin")
    assert [p.id for p in way.points] == [p.id for p in normal.points]
    for end, want in ((way.src, normal.src), (way.dst, normal.dst)):
        assert (end.host_veth, end.iflink, end.mac, end.mtu, end.gateway, end.arp_by) == \
            (want.host_veth, want.iflink, want.mac, want.mtu, want.gateway, want.arp_by)
    assert [w for w in way.warnings if "cannot be read inside" in w] == [
        w for w in way.warnings if any(f"pod {p} cannot be read inside" in w for p in pods)]
    assert len([w for w in way.warnings if "cannot be read inside" in w]) == len(pods)
    assert way.dst.route.endswith("not read (the pod has neither cat nor ip)")
