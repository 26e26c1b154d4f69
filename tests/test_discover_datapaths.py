"""Discovery's registry of data paths, without a lab: a two-node state whose nodes route the other
pod's block into a GRE device, which no registered data path knows, until a stand-in GRE data
path is registered (as a new CNI way would be: one module plus one entry in DATA_PATHS); and the
same state with Calico's IPIP device, which this kernel cannot build (its lab test skips here).

The IPIP device's `ip -j -d addr show` entry is put together from iproute2's printer
(ip/link_iptnl.c: info_kind "ipip", info_data local/remote/ttl/pmtudisc; ARPHRD_TUNNEL prints
link_type "ipip" and a 4-byte address), not captured from a kernel that has one."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Sequence

import pytest

import tracer.cluster.discover as discovery
from tracer.cluster.discover import discover
from tracer.cluster.discover.pod_ends import capture_point
from tracer.cluster.ports import ExecResult
from tracer.errors import ClusterError
from tracer.model import ROLES, WAY_POINT_ROLES, NodeTunnel, PodRef

PODS = {"a": PodRef(name="a", namespace="default", node="n1", ip="10.0.1.5"),
        "b": PodRef(name="b", namespace="default", node="n2", ip="10.0.2.5")}
NODE_IPS = {"n1": "192.168.0.1", "n2": "192.168.0.2"}
ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT"
ARP_HEADER = "IP address       HW type     Flags       HW address            Mask     Device"


class TwoNodes:
    """A Backend over a fixed state: pod a on n1, pod b on n2, each node's route to the other
    pod's block out of `device`, a `kind` device (gre: none that tracer knows; ipip: Calico's)."""

    def __init__(self, kind: str = "gre", device: str = "tun0") -> None:
        self.node_reads: list[tuple[str, tuple[str, ...]]] = []
        self.kind, self.device = kind, device

    def pod(self, name: str) -> PodRef:
        return PODS[name]

    def exec_pod(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        if argv[0] != "cat":
            return ExecResult(returncode=127, stdout=b"", stderr=b"ip: not found")  # (a busybox pod)
        files = ["4", "0a:58:0a:00:00:0%s" % pod.name[-1], "1480", ROUTE_HEADER,
                 "eth0\t00000000\t0101FEA9\t0003\t0\t0\t0\t00000000\t0\t0\t0",
                 "eth0\t0101FEA9\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0",
                 ARP_HEADER, "169.254.1.1      0x1         0x2         ee:ee:ee:ee:ee:ee     *        eth0"]
        return ExecResult(returncode=0, stdout="\n".join(files).encode() + b"\n", stderr=b"")

    def exec_node(self, node: str, argv: Sequence[str]) -> ExecResult:
        self.node_reads.append((node, tuple(argv)))
        other = "n2" if node == "n1" else "n1"
        pod, far = next(p for p in PODS.values() if p.node == node), next(p for p in PODS.values() if p.node == other)
        block = far.ip.rsplit(".", 1)[0] + ".0/24"
        answers = {
            ("ip", "-j", "-d", "addr", "show"): [
                {"ifindex": 2, "ifname": "eth1", "address": "52:54:00:00:00:0%s" % node[-1], "mtu": 1500,
                 "addr_info": [{"family": "inet", "local": NODE_IPS[node], "prefixlen": 24}]},
                {"ifindex": 4, "ifname": f"cali{pod.name}", "address": "ee:ee:ee:ee:ee:ee", "mtu": 1480},
                {"ifindex": 7, "ifname": self.device, "link_type": self.kind, "address": "0.0.0.0", "mtu": 1480,
                 "linkinfo": {"info_kind": self.kind, "info_data": {"remote": "any", "local": "any", "ttl": 0,
                                                                   "pmtudisc": True}},
                 "addr_info": [{"family": "inet", "local": "10.0.%s.0" % node[-1], "prefixlen": 32}]},
            ],
            ("ip", "-j", "route", "show"): [
                {"dst": "default", "gateway": "192.168.0.254", "dev": "eth1"},
                {"dst": pod.ip, "dev": f"cali{pod.name}", "scope": "link"},
                {"dst": block, "gateway": NODE_IPS[other], "dev": self.device, "flags": ["onlink"]},
            ],
            ("ip", "-j", "route", "get", far.ip): [{"dst": far.ip, "gateway": NODE_IPS[other], "dev": self.device}],
            ("ip", "-j", "route", "get", NODE_IPS[other]): [{"dst": NODE_IPS[other], "dev": "eth1",
                                                              "prefsrc": NODE_IPS[node]}],
            ("ip", "-j", "neigh", "show"): [],
            ("bridge", "-j", "fdb", "show"): [],
        }
        if argv[0] == "cat":
            return ExecResult(returncode=0, stdout=b"1\n0\n", stderr=b"")
        return ExecResult(returncode=0, stdout=json.dumps(answers[tuple(argv)]).encode(), stderr=b"")


def gre_data_path(recognizes: bool = True) -> types.ModuleType:
    """A data-path module as a new CNI way would be one: GRE through tun0."""
    m = types.ModuleType("stand_in_gre")
    m.NAME, m.DEVICE = "Stand-in GRE", "tun0"
    m.title = lambda src_end: m.NAME
    m.reads_ahead = lambda src, dst_pod: ()
    m.recognizes = lambda src, dst_pod: recognizes and src.device_toward(dst_pod.ip)["linkinfo"]["info_kind"] == "gre"
    m.reads_after = lambda src, dst_pod: (lambda: src.sysctl("net/ipv4/conf/tun0/forwarding"),)

    def between_nodes(src, dst, dst_pod):
        tun = src.device_toward(dst_pod.ip)
        tunnel = NodeTunnel(device="tun0", vni=0, udp_port=0, mtu=tun["mtu"], src_mac="", dst_mac="",
                            dst_tunnel_ip="", src_node_ip=NODE_IPS[src.name], dst_node_ip=NODE_IPS[dst.name],
                            route=src.route_for(dst_pod.ip), underlay_src="eth1", underlay_src_mac="",
                            underlay_dst="eth1", underlay_dst_mac="")
        points = [capture_point(src, tun, "tunnel", "egress", ("", ""), "GRE out."),
                  capture_point(dst, dst.link(name="tun0"), "tunnel", "ingress", ("", ""), "GRE in.")]
        return tunnel, points

    m.between_nodes = between_nodes
    return m


def register(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> None:
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(discovery, "DATA_PATHS", (*discovery.DATA_PATHS, module.__name__))


def test_a_way_no_data_path_knows_names_the_route_the_device_and_its_kind() -> None:
    with pytest.raises(ClusterError) as e:
        discover(TwoNodes(), "a", "b")
    assert e.value.message == ("node n1 sends 10.0.2.5 as `10.0.2.0/24 via 192.168.0.2 dev tun0 onlink`, out of tun0 "
                               "(gre): not a way tracer knows")
    assert e.value.hint.startswith("tracer knows Flannel VXLAN (flannel.1), ")


def test_a_registered_data_path_builds_the_way_between_the_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, gre_data_path())
    backend = TwoNodes()
    way = discover(backend, "a", "b")
    assert [(p.id, p.role, p.direction) for p in way.points] == [
        ("n1/calia", "pod-veth", "ingress"), ("n1/tun0", "tunnel", "egress"),
        ("n2/tun0", "tunnel", "ingress"), ("n2/calib", "pod-veth", "egress")]
    assert way.tunnel is not None and way.tunnel.route == "10.0.2.0/24 via 192.168.0.2 dev tun0 onlink"
    assert way.warnings == ()
    # Its follow-up read went with the second round, as the data path asked, once recognized.
    assert ("n1", ("cat", "/proc/sys/net/ipv4/conf/tun0/forwarding")) in backend.node_reads


def test_the_hint_names_every_registered_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, gre_data_path(recognizes=False))
    with pytest.raises(ClusterError) as e:
        discover(TwoNodes(), "a", "b")
    for module in discovery.data_paths():
        assert f"{module.NAME} ({module.DEVICE})" in e.value.hint
    assert e.value.hint.endswith(", Stand-in GRE (tun0)")


def test_the_path_document_keeps_its_keys_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, gre_data_path())
    doc = discover(TwoNodes(), "a", "b").to_dict()
    assert list(doc) == ["schema", "src", "dst", "same_node", "src_node_ip", "dst_node_ip", "vni", "udp_port",
                         "tunnel", "points", "warnings", "data_path"]  # (keys are only ever added, at the end)
    assert doc["schema"] == "tracer.path/v1"
    assert list(doc["src"])[:4] == ["name", "namespace", "node", "ip"]
    assert list(doc["points"][0])[:2] == ["id", "node"]
    assert set(WAY_POINT_ROLES) == set(ROLES) - {"unknown"}


def test_calico_ipip_from_the_nodes_state() -> None:
    """tunl0 (kind ipip) with routes via the peer node's IP onlink: Calico IPIP, its points in
    order, no MACs on tunl0 (raw IP), and follow's underlay filter on IP protocol 4."""
    from tracer.cluster.filters import underlay_filter

    way = discover(TwoNodes(kind="ipip", device="tunl0"), "a", "b")
    assert way.data_path == "Calico IPIP"
    assert [(p.id, p.role, p.direction) for p in way.points] == [
        ("n1/calia", "pod-veth", "ingress"), ("n1/tunl0", "tunnel", "egress"), ("n1/eth1", "underlay", "egress"),
        ("n2/eth1", "underlay", "ingress"), ("n2/tunl0", "tunnel", "ingress"), ("n2/calib", "pod-veth", "egress")]
    t = way.tunnel
    assert (t.encapsulation, t.vni, t.udp_port, t.src_node_ip, t.dst_node_ip) == ("ipip", None, None, *NODE_IPS.values())
    assert (way.points[2].eth_src, way.points[2].eth_dst) == ("52:54:00:00:00:01", "52:54:00:00:00:02")
    bpf = underlay_filter(way, 80)
    assert bpf.startswith("ip proto 4 and host 192.168.0.1 and host 192.168.0.2 and ((ip[32:4]=0x0A000105")
