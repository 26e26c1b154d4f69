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
    m.bypass = lambda src, dst_pod: ""
    m.reads_ahead = lambda src, dst_pod: ()
    m.recognizes = lambda src, dst_pod: recognizes and src.device_toward(dst_pod.ip)["linkinfo"]["info_kind"] == "gre"
    m.reads_after = lambda src, dst_pod: (lambda: src.sysctl("net/ipv4/conf/tun0/forwarding"),)

    def between_nodes(src, dst, dst_pod):
        tun = src.device_toward(dst_pod.ip)
        tunnel = NodeTunnel(device="tun0", vni=0, udp_port=0, mtu=tun["mtu"], src_mac="", dst_mac="",
                            dst_tunnel_ip="", src_node_ip=NODE_IPS[src.name], dst_node_ip=NODE_IPS[dst.name],
                            route=src.route_for(dst_pod.ip), underlay_src="eth1", underlay_src_mac="",
                            underlay_dst="eth1", underlay_dst_mac="", encapsulation="gre")
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
    known, _, anyway = e.value.hint.partition("; ")
    assert known.endswith(", Stand-in GRE (tun0)")
    assert anyway == "to capture anyway, name the interfaces: tracer follow SRC DST --point NODE/IFACE ..."


def test_the_path_document_keeps_its_keys_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, gre_data_path())
    doc = discover(TwoNodes(), "a", "b").to_dict()
    assert list(doc) == ["schema", "src", "dst", "same_node", "src_node_ip", "dst_node_ip", "vni", "udp_port",
                         "tunnel", "points", "warnings", "data_path", "service"]  # (keys are only ever added, at the end)
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
    assert bpf.startswith("(ip proto 4 and host 192.168.0.1 and host 192.168.0.2 and ((ip[32:4]=0x0A000105")


# --- follow --point: interfaces named by hand -----------------------------------------------------

def test_point_captures_a_way_no_data_path_knows_between_the_pods_ends() -> None:
    """GRE through tun0 (no data path knows it): with --point the way is the pods' ends, which
    every CNI shares, and the named interfaces between them by node, each captured whole."""
    from tracer.cluster.filters import capture_plan

    way = discover(TwoNodes(), "a", "b", points=("n1/eth1", "n2/eth1", "n1/tun0"))
    assert [(p.id, p.role, p.direction, p.asked) for p in way.points] == [
        ("n1/calia", "pod-veth", "ingress", False), ("n1/eth1", "underlay", "egress", True),
        ("n1/tun0", "tunnel", "egress", True), ("n2/eth1", "underlay", "ingress", True),
        ("n2/calib", "pod-veth", "egress", False)]
    assert way.data_path == "unknown" and way.tunnel is not None and way.tunnel.encapsulation == "unknown"
    assert (way.tunnel.device, way.tunnel.route) == ("tun0", "10.0.2.0/24 via 192.168.0.2 dev tun0 onlink")
    assert way.warnings == ("node n1 sends 10.0.2.5 as `10.0.2.0/24 via 192.168.0.2 dev tun0 onlink`, out of tun0 "
                            "(gre): not a way tracer knows: capturing on n1/eth1, n2/eth1, n1/tun0 as --point "
                            "asked, every frame there",)
    plan = {n: {s.interface: s.bpf for s in specs} for n, specs in capture_plan(way, 80).items()}
    assert plan["n1"]["eth1"] == plan["n1"]["tun0"] == plan["n2"]["eth1"] == ""  # (every frame)
    assert plan["n1"]["calia"].startswith("(host 10.0.1.5 and host 10.0.2.5 and tcp port 80) or arp host")
    doc = way.to_dict()
    assert [p["asked"] for p in doc["points"]] == [False, True, True, True, False]
    assert doc["tunnel"]["encapsulation"] == "unknown"


def test_point_on_a_known_way_goes_with_its_node(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, gre_data_path())
    way = discover(TwoNodes(), "a", "b", points=("n2/eth1", "n1/eth1", "n1/tun0"))
    assert [(p.id, p.asked) for p in way.points] == [
        ("n1/calia", False), ("n1/tun0", False), ("n1/eth1", True), ("n2/eth1", True), ("n2/tun0", False),
        ("n2/calib", False)]  # (n1/tun0 was on the way already: once, as discovery has it)
    assert way.data_path == "Stand-in GRE" and way.warnings == ()


def test_point_that_names_no_interface_says_what_the_node_has() -> None:
    from tracer.errors import NotFoundError, UsageError

    with pytest.raises(NotFoundError) as e:
        discover(TwoNodes(), "a", "b", points=("n2/eth9",))
    assert (e.value.message, e.value.hint) == ("--point n2/eth9: node n2 has no interface eth9",
                                               "it has eth1, calib, tun0")
    for bad in ("eth1", "n1/", "/eth1", "n1/eth1/x"):
        with pytest.raises(UsageError, match="not NODE/IFACE"):
            discover(TwoNodes(), "a", "b", points=(bad,))


# --- a real Cilium node: routes via cilium_host, and the points its eBPF may bypass --------------

class CiliumNodes(TwoNodes):
    """A real Cilium node's state in tunnel mode, put together from DATAPATHS.md §6 (not captured
    from one): the pods' gateway the router IP on cilium_host (answered with the lxc's MAC), node
    routes to the other node's pod CIDR `via <own router IP> dev cilium_host src <it>`, a
    FlowBased (external) cilium_vxlan on 8472, no neighbour or FDB entry naming the peer."""

    def exec_pod(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        router = "%02X01000A" % int(pod.node[-1])  # 10.0.N.1, as /proc/net/route has it (little-endian)
        files = ["4", "0a:58:0a:00:00:0%s" % pod.name[-1], "1450", ROUTE_HEADER,
                 f"eth0\t00000000\t{router[:2]}01000A\t0003\t0\t0\t0\t00000000\t0\t0\t0",
                 ARP_HEADER, f"10.0.{pod.node[-1]}.1         0x1         0x2         "
                             f"02:aa:00:00:00:0{pod.node[-1]}     *        eth0"]
        return ExecResult(returncode=0, stdout="\n".join(files).encode() + b"\n", stderr=b"")

    def exec_node(self, node: str, argv: Sequence[str]) -> ExecResult:
        self.node_reads.append((node, tuple(argv)))
        n, other = node[-1], "n2" if node == "n1" else "n1"
        pod, far = next(p for p in PODS.values() if p.node == node), next(p for p in PODS.values() if p.node == other)
        block = far.ip.rsplit(".", 1)[0] + ".0/24"
        router = f"10.0.{n}.1"
        answers = {
            ("ip", "-j", "-d", "addr", "show"): [
                {"ifindex": 2, "ifname": "eth1", "address": f"52:54:00:00:00:0{n}", "mtu": 1500,
                 "addr_info": [{"family": "inet", "local": NODE_IPS[node], "prefixlen": 24}]},
                {"ifindex": 3, "ifname": "cilium_net", "address": f"4e:00:00:00:01:0{n}", "mtu": 1500,
                 "linkinfo": {"info_kind": "veth"}},
                {"ifindex": 4, "ifname": "lxc1234567890a" + n, "address": f"02:aa:00:00:00:0{n}", "mtu": 1500,
                 "linkinfo": {"info_kind": "veth"}},
                {"ifindex": 5, "ifname": "cilium_host", "address": f"4e:00:00:00:02:0{n}", "mtu": 1500,
                 "linkinfo": {"info_kind": "veth"},
                 "addr_info": [{"family": "inet", "local": router, "prefixlen": 32}]},
                {"ifindex": 6, "ifname": f"cilium_{self.kind}", "address": f"7a:00:00:00:03:0{n}", "mtu": 1500,
                 "linkinfo": {"info_kind": self.kind, "info_data": {"external": True,
                                                                    "port": 8472 if self.kind == "vxlan" else 6081}}},
            ],
            ("ip", "-j", "route", "show"): [
                {"dst": "default", "gateway": "192.168.0.254", "dev": "eth1"},
                {"dst": pod.ip, "dev": "lxc1234567890a" + n, "scope": "link"},
                {"dst": block, "gateway": router, "dev": "cilium_host", "prefsrc": router, "metrics": [{"mtu": 1450}]},
            ],
            ("ip", "-j", "route", "get", far.ip): [{"dst": far.ip, "gateway": router, "dev": "cilium_host",
                                                     "prefsrc": router}],
            ("ip", "-j", "route", "get", NODE_IPS[other]): [{"dst": NODE_IPS[other], "dev": "eth1",
                                                              "prefsrc": NODE_IPS[node]}],
            ("ip", "-j", "neigh", "show"): [],
            ("bridge", "-j", "fdb", "show"): [],
        }
        if argv[0] == "cat":
            return ExecResult(returncode=0, stdout=b"0\n0\n", stderr=b"")
        return ExecResult(returncode=0, stdout=json.dumps(answers[tuple(argv)]).encode(), stderr=b"")


@pytest.mark.parametrize("kind", ["vxlan", "geneve"])
def test_a_real_cilium_node_marks_the_lxc_veths_its_ebpf_may_bypass(kind: str) -> None:
    """Via cilium_host, a node may run BPF host routing: bpf_redirect_peer puts the tunnel's
    packets into the pod past the host side of its lxc. Those points are marked in path (and
    path.json), the others not; the lab's Cilium (routed by the kernel) marks none."""
    import io

    from rich.console import Console

    from tracer.render.path import render_way

    from tracer.cluster.filters import underlay_filter

    way = discover(CiliumNodes(kind=kind), "a", "b")
    assert way.data_path == "Cilium tunnel"
    assert [(p.id, p.role, bool(p.bypass)) for p in way.points] == [
        ("n1/lxc1234567890a1", "pod-veth", True), (f"n1/cilium_{kind}", "tunnel", False),
        ("n1/eth1", "underlay", False), ("n2/eth1", "underlay", False), (f"n2/cilium_{kind}", "tunnel", False),
        ("n2/lxc1234567890a2", "pod-veth", True)]
    t = way.tunnel
    assert (t.encapsulation, t.udp_port, t.vni) == (kind, 8472 if kind == "vxlan" else 6081, None)
    assert underlay_filter(way, 80).startswith(f"(udp port {t.udp_port} and host 192.168.0.1 and host 192.168.0.2")
    assert "bpf_redirect_peer" in way.points[0].bypass
    assert way.src.arp_by == "node" and way.tunnel.collect_metadata and way.tunnel.dst_node_ip == "192.168.0.2"
    assert [bool(p["bypass"]) for p in way.to_dict()["points"]] == [True, False, False, False, False, True]
    out = io.StringIO()
    render_way(way, Console(file=out, width=200, highlight=False, soft_wrap=True))
    assert out.getvalue().count("may be bypassed: with BPF host routing") == 2
