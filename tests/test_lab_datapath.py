"""The lab against every fact of CALICO-DATAPATH.md, read back from the kernel with `ip -j`."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from conftest import ip_json, ns_run, run_tracer
from tracer.cluster.lab import Lab

pytestmark = pytest.mark.root

CALI_MAC = "ee:ee:ee:ee:ee:ee"


def link(ns: str, name: str) -> dict:
    (found,) = ip_json(ns, "-d", "addr", "show", "dev", name)
    return found


def routes(ns: str) -> set[str]:
    out = set()
    for r in ip_json(ns, "route", "show"):
        text = r["dst"] + (f" via {r['gateway']}" if "gateway" in r else "") + f" dev {r['dev']}"
        text += f" scope {r['scope']}" if r.get("scope") == "link" else ""
        out.add(text + "".join(f" {f}" for f in r.get("flags", [])))
    return out


def sysctl(ns: str, name: str) -> str:
    return ns_run(ns, "cat", f"/proc/sys/{name}").strip()


def test_real_curl_gets_http_200_from_real_httpbin(lab: Lab) -> None:
    res = lab.exec("curl", ["curl", "-s", "-w", "\n%{http_code}", "http://172.18.104.14:80/get"])
    body, status = res.stdout.decode().rsplit("\n", 1)
    assert (res.returncode, status) == (0, "200")
    assert '"origin": "172.18.166.139"' in body  # httpbin saw the pod IP: no NAT on the way


def test_curl_through_lab_exec_cli(lab: Lab) -> None:
    proc = run_tracer("lab", "exec", "curl", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                      "http://172.18.104.14/status/200", store=lab.store)
    assert (proc.returncode, proc.stdout) == (0, "200")


def test_lab_exec_returns_the_commands_exit_code(lab: Lab) -> None:
    assert run_tracer("lab", "exec", "worker1", "--", "sh", "-c", "exit 7", store=lab.store).returncode == 7


@pytest.mark.parametrize("pod", ["curl", "httpbin"])
def test_pod_eth0(lab: Lab, pod: str) -> None:
    p = lab.pod(pod)
    eth0 = link(p.netns, "eth0")
    assert eth0["mtu"] == 1450
    assert eth0["address"] == p.mac
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [(p.ip, 32)]
    assert routes(p.netns) == {"169.254.1.1 dev eth0 scope link", "default via 169.254.1.1 dev eth0"}


@pytest.mark.parametrize("pod", ["curl", "httpbin"])
def test_host_veth_is_calicos(lab: Lab, pod: str) -> None:
    p = lab.pod(pod)
    node_ns = lab.node(p.node).netns
    name = "cali" + hashlib.sha1(f"default.{pod}".encode()).hexdigest()[:11]
    assert p.host_veth == name
    cali = link(node_ns, name)
    # eth0@ifN: N is the cali end's ifindex on the node, and the reverse holds too.
    eth0 = link(p.netns, "eth0")
    assert eth0["link_index"] == cali["ifindex"]
    assert cali["link_index"] == eth0["ifindex"]
    assert ns_run(p.netns, "cat", "/sys/class/net/eth0/iflink").strip() == str(cali["ifindex"])
    assert cali["address"] == CALI_MAC
    assert cali["mtu"] == 1450
    assert [a for a in cali["addr_info"] if a["family"] == "inet"] == []
    assert sysctl(node_ns, f"net/ipv4/conf/{name}/proxy_arp") == "1"
    assert sysctl(node_ns, f"net/ipv4/neigh/{name}/proxy_delay") == "0"
    assert f"{p.ip} dev {name} scope link" in routes(node_ns)
    (hop,) = ip_json(node_ns, "route", "get", p.ip)
    assert hop["dev"] == name


def test_exercise_steps_as_written(lab: Lab) -> None:
    """Seed steps 3.1-3.4 via `tracer lab exec`, word for word."""
    def tracer_exec(*argv: str) -> str:
        return run_tracer("lab", "exec", *argv, store=lab.store, check=True).stdout

    assert "172.18.104.14 via 169.254.1.1 dev eth0 src 172.18.166.139" in tracer_exec(
        "curl", "--", "ip", "route", "get", "172.18.104.14")
    assert "169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee" in tracer_exec("curl", "--", "ip", "neigh")
    first = tracer_exec("curl", "--", "ip", "link", "show", "eth0").split()
    peer = int(first[1].removeprefix("eth0@if").rstrip(":"))
    assert f"{peer}: {lab.pod('curl').host_veth}@" in tracer_exec("worker1", "--", "ip", "link")


def test_ip_forward_and_default_route(lab: Lab) -> None:
    for node in lab.nodes:
        assert sysctl(node.netns, "net/ipv4/ip_forward") == "1"
        assert "default via 192.168.56.1 dev eth1" in routes(node.netns)


def test_underlay_nic(lab: Lab) -> None:
    for node in lab.nodes:
        eth1 = link(node.netns, "eth1")
        assert eth1["address"] == node.underlay_mac
        assert eth1["mtu"] == 1500
        assert [(a["local"], a["prefixlen"]) for a in eth1["addr_info"]] == [(node.underlay_ip, 24)]


def test_vxlan_calico_device(lab: Lab) -> None:
    for node in lab.nodes:
        vx = link(node.netns, "vxlan.calico")
        info = vx["linkinfo"]["info_data"]
        assert vx["linkinfo"]["info_kind"] == "vxlan"
        assert (info["id"], info["port"], info["local"], info["learning"]) == (4096, 4789, node.underlay_ip, False)
        assert vx["mtu"] == 1450
        assert vx["address"] == node.tunnel_mac
        (addr,) = vx["addr_info"]
        assert addr["prefixlen"] == 32
        assert ipaddress.ip_address(addr["local"]) in ipaddress.ip_network(node.block)


def test_static_entries_per_other_node(lab: Lab) -> None:
    for node in lab.nodes:
        for other in (n for n in lab.nodes if n.name != node.name):
            assert f"{other.block} via {other.tunnel_ip} dev vxlan.calico onlink" in routes(node.netns)
            neigh = [n for n in ip_json(node.netns, "neigh", "show", "dev", "vxlan.calico") if n["dst"] == other.tunnel_ip]
            assert [(n["lladdr"], n["state"]) for n in neigh] == [(other.tunnel_mac, ["PERMANENT"])]
            fdb = ip_json(node.netns, "neigh", "show", "dev", "vxlan.calico", "nud", "permanent")
            assert any(n["lladdr"] == other.tunnel_mac for n in fdb)
            bridge = ns_run(node.netns, "bridge", "fdb", "show", "dev", "vxlan.calico")
            assert f"{other.tunnel_mac} dst {other.underlay_ip}" in bridge


def test_pod_arp_entry_is_the_proxy_answer(lab: Lab) -> None:
    lab.exec("curl", ["curl", "-s", "-o", "/dev/null", "http://172.18.104.14/status/200"])
    neigh = [n for n in ip_json(lab.pod("curl").netns, "neigh", "show", "dev", "eth0") if n["dst"] == "169.254.1.1"]
    assert [n["lladdr"] for n in neigh] == [CALI_MAC]
    assert CALI_MAC != lab.pod("curl").mac  # not the pod's own MAC (seed step 3.3)
