"""Every data path the lab builds here, end to end: the kernel's state against DATAPATHS.md, what
`tracer path` reads of it, and what `tracer follow` captures on it (MACs against the namespaces'
real MACs, TTL 64 -> 62 across nodes, the encapsulation's type, port and VNI, or none), for a
pair on two nodes and a pair on one node. Calico VXLAN, the default, has test_lab_datapath.py
and test_follow.py; calico-ipip and cilium-geneve need devices this kernel lacks (their tests
say so and skip, after checking the refusal is the clear one)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from conftest import ip_json, make_store, ns_run, run_tracer
from tracer.cluster.lab import Lab, down, exercise, netns, up
from tracer.cluster.lab.topology import (
    CALICO_BGP, CALICO_IPIP, CILIUM_GENEVE, CILIUM_VXLAN, FLANNEL_HOST_GW, FLANNEL_VXLAN, with_pods,
)
from tracer.errors import LabError

pytestmark = [pytest.mark.root, pytest.mark.slow]

BUILT_HERE = (CALICO_BGP, FLANNEL_VXLAN, FLANNEL_HOST_GW, CILIUM_VXLAN)
# what the request's way passes on each (the pod veths' names differ: the CNI names them)
WAYS = {
    CALICO_BGP: ["worker1/{curl}", "worker1/eth1", "worker2/eth1", "worker2/{httpbin}"],
    FLANNEL_VXLAN: ["worker1/{curl}", "worker1/cni0", "worker1/flannel.1", "worker1/eth1", "worker2/eth1",
                    "worker2/flannel.1", "worker2/cni0", "worker2/{httpbin}"],
    FLANNEL_HOST_GW: ["worker1/{curl}", "worker1/cni0", "worker1/eth1", "worker2/eth1", "worker2/cni0",
                      "worker2/{httpbin}"],
    CILIUM_VXLAN: ["worker1/{curl}", "worker1/cilium_vxlan", "worker1/eth1", "worker2/eth1", "worker2/cilium_vxlan",
                   "worker2/{httpbin}"],
}
TITLES = {CALICO_BGP: "Calico, no encapsulation (BGP routes)", FLANNEL_VXLAN: "Flannel VXLAN",
          FLANNEL_HOST_GW: "Flannel host-gw", CILIUM_VXLAN: "Cilium tunnel"}


@pytest.fixture(scope="module", params=BUILT_HERE)
def cni_lab(request) -> Iterator[Lab]:
    """The exercise's lab on one data path, with a second httpbin on worker1 for the same-node way."""
    store = make_store(request.param.replace("-", "")[:8] + secrets.token_hex(1))
    built = up(with_pods(exercise(2, request.param), (("httpbin2", "worker1", "httpbin"),)), store=store)
    try:
        yield built
    finally:
        down(store)


def link(ns: str, dev: str) -> dict:
    return ip_json(ns, "-d", "link", "show", "dev", dev)[0]


def routes(ns: str) -> str:
    return ns_run(ns, "ip", "route", "show")


# --- the kernel's state, as DATAPATHS.md has it --------------------------------------------------

def test_the_kernel_state_is_the_data_path_s(cni_lab: Lab) -> None:
    cni = cni_lab.topology.cni
    w1, w2 = cni_lab.node("worker1"), cni_lab.node("worker2")
    curl = cni_lab.pod("curl")
    veth = link(w1.netns, curl.host_veth)
    assert veth["address"] == curl.host_veth_mac
    if cni.startswith("flannel"):
        # the pods' gateway is cni0's .1 (/24), the veth one of its ports, hairpin on
        cni0 = ip_json(w1.netns, "addr", "show", "dev", "cni0")[0]
        assert [(a["local"], a["prefixlen"]) for a in cni0["addr_info"]] == [("10.42.0.1", 24)]
        assert veth["master"] == "cni0" and veth["linkinfo"]["info_slave_data"]["hairpin"] is True
        assert "default via 10.42.0.1 dev eth0" in routes(curl.netns)
        assert curl.host_veth.startswith("veth") and len(curl.host_veth) == 12
    if cni == FLANNEL_VXLAN:
        fl = link(w1.netns, "flannel.1")["linkinfo"]["info_data"]
        assert (fl["id"], fl["port"], fl["learning"]) == (1, 8472, False)
        assert "10.42.1.0/24 via 10.42.1.0 dev flannel.1 onlink" in routes(w1.netns)
        neigh = ip_json(w1.netns, "neigh", "show", "dev", "flannel.1")
        assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [("10.42.1.0", w2.tunnel_mac, ["PERMANENT"])]
        fdb = subprocess.run(["bridge", "-n", w1.netns, "fdb", "show", "dev", "flannel.1"], capture_output=True,
                             text=True, check=True).stdout
        assert f"{w2.tunnel_mac} dst {w2.underlay_ip} self permanent" in fdb
    if cni in (FLANNEL_HOST_GW, CALICO_BGP):
        assert f"{w2.block} via {w2.underlay_ip} dev eth1" in routes(w1.netns)
        assert not any(l.get("linkinfo", {}).get("info_kind") == "vxlan" for l in ip_json(w1.netns, "-d", "link"))
    if cni == CALICO_BGP:
        assert f"blackhole {w1.block}" in routes(w1.netns)
        assert veth["address"] == "ee:ee:ee:ee:ee:ee"
        assert "default via 169.254.1.1 dev eth0" in routes(curl.netns)
    if cni == CILIUM_VXLAN:
        vx = link(w1.netns, "cilium_vxlan")["linkinfo"]["info_data"]
        assert vx["external"] is True and vx["port"] == 8472  # collect-metadata: no VNI of its own
        fdb = subprocess.run(["bridge", "-n", w1.netns, "-j", "fdb", "show", "dev", "cilium_vxlan"],
                             capture_output=True, text=True, check=True).stdout
        assert [e for e in json.loads(fdb or "[]") if e.get("dst")] == []  # no per-peer FDB
        assert curl.host_veth.startswith("lxc") and len(curl.host_veth) == 15
        assert ns_run(w1.netns, "cat", f"/proc/sys/net/ipv4/conf/{curl.host_veth}/proxy_arp").strip() == "0"
        host = ip_json(w1.netns, "addr", "show", "dev", "cilium_host")[0]
        assert [a["local"] for a in host["addr_info"]] == [w1.tunnel_ip]
        # the pod's identity is the VNI of its table's routes, chosen by an ip rule from its IP
        rules = ns_run(w1.netns, "ip", "rule", "show")
        table = next(line.split("lookup ")[1].split()[0] for line in rules.splitlines() if f"from {curl.ip}" in line)
        assert f"encap ip id {curl.identity} " in ns_run(w1.netns, "ip", "route", "show", "table", table)


# --- tracer path -------------------------------------------------------------------------------

def _way(lab: Lab) -> list[str]:
    names = {"curl": lab.pod("curl").host_veth, "httpbin": lab.pod("httpbin").host_veth}
    return [p.format(**names) for p in WAYS[lab.topology.cni]]


def test_path_lists_the_points_in_order_and_names_the_data_path(cni_lab: Lab) -> None:
    doc = json.loads(run_tracer("path", "curl", "httpbin", "-o", "json", store=cni_lab.store, check=True).stdout)
    assert [p["id"] for p in doc["points"]] == _way(cni_lab)
    assert doc["data_path"] == TITLES[cni_lab.topology.cni]
    assert doc["warnings"] == []
    cni = cni_lab.topology.cni
    tunnel = doc["tunnel"]
    want = {CALICO_BGP: ("none", None, None), FLANNEL_HOST_GW: ("none", None, None),
            FLANNEL_VXLAN: ("vxlan", 1, 8472), CILIUM_VXLAN: ("vxlan", None, 8472)}[cni]
    assert (tunnel["encapsulation"], tunnel["vni"], tunnel["udp_port"]) == want
    w1, w2 = cni_lab.node("worker1"), cni_lab.node("worker2")
    assert (tunnel["src_node_ip"], tunnel["dst_node_ip"]) == (w1.underlay_ip, w2.underlay_ip)
    text = run_tracer("path", "curl", "httpbin", store=cni_lab.store, check=True).stdout
    if cni.startswith("flannel"):
        assert "cni0 answers its ARP" in text and "proxy_arp" not in text
    if cni == CILIUM_VXLAN:
        assert "eBPF ARP responder" in text and "collect-metadata" in text and "security identity" in text


def test_path_of_a_same_node_pair(cni_lab: Lab) -> None:
    doc = json.loads(run_tracer("path", "curl", "httpbin2", "-o", "json", store=cni_lab.store, check=True).stdout)
    curl, other = cni_lab.pod("curl"), cni_lab.pod("httpbin2")
    assert doc["same_node"] is True
    assert [p["id"] for p in doc["points"]] == [f"worker1/{curl.host_veth}", f"worker1/{other.host_veth}"]
    if cni_lab.topology.cni.startswith("flannel"):  # one bridge's subnet: switched, pod MAC to pod MAC
        assert (doc["points"][0]["eth_src"], doc["points"][0]["eth_dst"]) == (curl.mac, other.mac)


# --- tracer follow -------------------------------------------------------------------------------

def _mac(ns: str, dev: str) -> str:
    return link(ns, dev)["address"]


def test_follow_shows_every_hop_with_the_kernel_s_macs_ttls_and_encapsulation(cni_lab: Lab) -> None:
    proc = run_tracer("follow", "curl", "httpbin", "-o", "json", store=cni_lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["follow"]["curl"][0]["status"] == 200
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    syn = next(p for p in flow["packets"] if p["tcp_flags"] == "S")
    synack = next(p for p in flow["packets"] if p["tcp_flags"] == "SA")
    way = _way(cni_lab)
    assert [h["point"] for h in syn["hops"]] == way
    assert [h["point"] for h in synack["hops"]] == way[::-1]
    assert syn["hops"][0]["ttl"] == 64 and syn["hops"][-1]["ttl"] == 62
    assert all(not p["missing"] for p in flow["packets"])
    cni = cni_lab.topology.cni
    w1, w2 = cni_lab.node("worker1"), cni_lab.node("worker2")
    curl, httpbin = cni_lab.pod("curl"), cni_lab.pod("httpbin")
    first, last = syn["hops"][0], syn["hops"][-1]
    gw_mac = _mac(w1.netns, "cni0") if cni.startswith("flannel") else _mac(w1.netns, curl.host_veth)
    assert (first["eth_src"], first["eth_dst"]) == (_mac(curl.netns, "eth0"), gw_mac)
    last_src = _mac(w2.netns, "cni0") if cni.startswith("flannel") else _mac(w2.netns, httpbin.host_veth)
    assert (last["eth_src"], last["eth_dst"]) == (last_src, _mac(httpbin.netns, "eth0"))
    nic = next(h for h in syn["hops"] if h["point"] == "worker1/eth1")
    if cni in (CALICO_BGP, FLANNEL_HOST_GW):
        # routed: the pod's packet itself on the wire, the NICs' MACs, no tunnel anywhere
        assert nic["encap"] is None and all(h["encap"] is None for h in syn["hops"])
        assert (nic["eth_src"], nic["eth_dst"]) == (_mac(w1.netns, "eth1"), _mac(w2.netns, "eth1"))
        assert (nic["ip_src"], nic["ip_dst"], nic["ttl"]) == (curl.ip, httpbin.ip, 63)
    else:
        e = nic["encap"]
        assert (e["type"], e["udp_dport"]) == ("vxlan", 8472)
        assert (e["outer_ip_src"], e["outer_ip_dst"]) == (w1.underlay_ip, w2.underlay_ip)
        assert (e["outer_eth_src"], e["outer_eth_dst"]) == (_mac(w1.netns, "eth1"), _mac(w2.netns, "eth1"))
        back = next(h for h in synack["hops"] if h["point"] == "worker2/eth1")["encap"]
        if cni == FLANNEL_VXLAN:
            assert e["vni"] == back["vni"] == 1
        else:  # Cilium: each direction's VNI is its sender's identity
            assert (e["vni"], back["vni"]) == (curl.identity, httpbin.identity)


def test_follow_of_a_same_node_pair(cni_lab: Lab) -> None:
    proc = run_tracer("follow", "curl", "httpbin2", "-o", "json", store=cni_lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    syn = next(p for p in flow["packets"] if p["tcp_flags"] == "S")
    curl, other = cni_lab.pod("curl"), cni_lab.pod("httpbin2")
    assert [h["point"] for h in syn["hops"]] == [f"worker1/{curl.host_veth}", f"worker1/{other.host_veth}"]
    ttls = [h["ttl"] for h in syn["hops"]]
    if cni_lab.topology.cni.startswith("flannel"):
        assert ttls == [64, 64]  # switched by cni0, not routed
        assert syn["hops"][1]["eth_src"] == _mac(curl.netns, "eth0")
    else:
        assert ttls == [64, 63]  # routed by the node between the two veths


# --- what cannot be built here -------------------------------------------------------------------

def _kernel_has(kind: str) -> bool:
    """Whether `ip link add ... type KIND` works, tried in a namespace of this session's own."""
    ns = make_store("probe" + secrets.token_hex(2)).prefix + "probe"
    netns.add([ns])
    try:
        return subprocess.run(["ip", "-n", ns, "link", "add", "probe", "type", kind,
                               *(["external"] if kind == "geneve" else [])], capture_output=True).returncode == 0
    finally:
        netns.delete([ns])


@pytest.mark.parametrize("cni,kind", [(CALICO_IPIP, "ipip"), (CILIUM_GENEVE, "geneve")])
def test_a_data_path_whose_devices_this_kernel_lacks(cni: str, kind: str) -> None:
    store = make_store(kind + secrets.token_hex(1))
    if not _kernel_has(kind):
        with pytest.raises(LabError) as e:
            up(exercise(2, cni), store=store)
        assert f"--cni {cni} needs {kind} devices, which this kernel does not have" in e.value.message
        assert store.load() is None and netns.with_prefix(store.prefix) == []  # (refused before making anything)
        pytest.skip(f"this kernel has no {kind} devices (`ip link add type {kind}`: Unknown device type): "
                    f"--cni {cni} is refused, as checked")
    built = up(exercise(2, cni), store=store)
    try:
        doc = json.loads(run_tracer("follow", "curl", "httpbin", "-o", "json", store=store, check=True).stdout)
        syn = next(p for f in doc["flows"] for p in f["packets"] if p["tcp_flags"] == "S")
        assert syn["hops"][0]["ttl"] == 64 and syn["hops"][-1]["ttl"] == 62 and not syn["missing"]
        assert any(h["encap"] and h["encap"]["type"] == {"ipip": "ipip", "geneve": "geneve"}[kind]
                   for h in syn["hops"]), built.topology.cni
    finally:
        down(store)


def test_lab_status_names_the_data_path_and_exec_works_the_same(cni_lab: Lab) -> None:
    cni = cni_lab.topology.cni
    doc = json.loads(run_tracer("lab", "status", "-o", "json", store=cni_lab.store, check=True).stdout)
    assert (doc["cni"], doc["title"]) == (cni, {CILIUM_VXLAN: "Cilium tunnel, VXLAN"}.get(cni, TITLES[cni]))
    assert doc["notes"]
    text = run_tracer("lab", "status", store=cni_lab.store, check=True).stdout
    assert f"{cni}: {doc['title']}" in text
    if cni == CILIUM_VXLAN:
        assert "where a real Cilium node differs" in text and "identity" in text
        assert {p["name"]: p["identity"] for p in doc["pods"]}["curl"] == cni_lab.pod("curl").identity
    node = run_tracer("lab", "exec", "worker1", "--", "ip", "route", store=cni_lab.store, check=True).stdout
    assert f"{cni_lab.node('worker2').block} " in node
    pod = run_tracer("lab", "exec", "curl", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                     f"http://{cni_lab.pod('httpbin').ip}/get", store=cni_lab.store, check=True).stdout
    assert pod == "200"


def test_analyze_places_the_points_from_the_captures_alone(cni_lab: Lab, tmp_path) -> None:
    """follow --save, path.json taken away: roles from names and traffic (cni0 a bridge, lxc and
    veth pod veths, 8472 VXLAN), the order from the TTLs and roles, no packet lost."""
    run = tmp_path / "run"
    run_tracer("follow", "curl", "httpbin", "--save", str(run), store=cni_lab.store, check=True)
    (run / "path.json").unlink()
    doc = json.loads(run_tracer("analyze", str(run), "-o", "json", store=cni_lab.store, check=True).stdout)
    roles = {p["id"]: p["role"] for p in doc["points"]}
    want = {"cni0": "bridge", "flannel.1": "tunnel", "cilium_vxlan": "tunnel", "eth1": "underlay"}
    for pid, role in roles.items():
        iface = pid.split("/", 1)[1]
        assert role == want.get(iface, "pod-veth"), (pid, role)
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    syn = next(p for p in flow["packets"] if p["tcp_flags"] == "S")
    assert [h["point"] for h in syn["hops"]] == _way(cni_lab)
    assert all(not p["missing"] for p in flow["packets"])


def test_services_and_the_cluster_dns_work_the_same(cni_lab: Lab) -> None:
    """kube-proxy's DNAT and the cluster DNS (on worker2, across the tunnel) on every data path."""
    out = run_tracer("lab", "exec", "curl", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                     "http://httpbin/get", store=cni_lab.store, check=True)
    assert out.stdout == "200"
