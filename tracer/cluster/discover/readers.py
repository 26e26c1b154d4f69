"""Discover the expected way of a request between two pods from the live state.

The seed exercise's steps 3.1-3.4 done automatically (pod route and ARP table, veth peer
ifindex -> host interface, proxy_arp) and the step 4 it leaves empty (the node's route to
the destination, the VXLAN device, its neighbour and FDB entry, the underlay NIC on both
nodes). Nothing here knows about the lab: it reads state through a `Backend`, so the
Kubernetes backend plugs in the same way.

Pod side commands are busybox-safe (`cat` of /sys and /proc, `ip route get` only if present);
node side commands use `ip -j`, `bridge -j` and `cat /proc/sys/...`.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from tracer.cluster.ports import Backend, ExecResult
from tracer.errors import ClusterError
from tracer.model import NodeTunnel, PodEnd, PodRef, Way, WayPoint


def discover(backend: Backend, src: str, dst: str) -> Way:
    """Read the live state of both pods and nodes and return the request's expected way.

    The reads are fetched ahead, those that do not depend on each other at once (each one is a
    process on the lab, an exec round trip on Kubernetes), in two rounds: what the pods' names
    tell, then the veths' sysctls and the route to the other node that the first round names.
    The way is then built from those caches in order, as if read one by one: a read that failed
    ahead is done again there, so errors come as they always did.
    """
    src_pod, dst_pod = backend.pod(src), backend.pod(dst)
    src_node = _Node(backend, src_pod.node)
    dst_node = src_node if dst_pod.node == src_pod.node else _Node(backend, dst_pod.node)
    src_reads, dst_reads = _PodReads(backend, src_pod, dst_pod.ip), _PodReads(backend, dst_pod, src_pod.ip)
    _prefetch(src_reads, dst_reads, src_node, dst_node, dst_pod)
    src_end = _pod_end(src_reads, src_node)
    dst_end = _pod_end(dst_reads, dst_node)
    warnings = [*_end_warnings(src_end, src_node), *_end_warnings(dst_end, dst_node)]

    first = _veth_point(src_end, src_node, "ingress")
    last = _veth_point(dst_end, dst_node, "egress")
    if dst_pod.node == src_pod.node:
        return Way(src=src_end, dst=dst_end, tunnel=None, points=(first, last), warnings=tuple(warnings))
    tunnel = _tunnel(src_node, dst_node, dst_pod)
    return Way(
        src=src_end, dst=dst_end, tunnel=tunnel,
        points=(first, *_tunnel_points(tunnel, src_node, dst_node, src_end, dst_end), last),
        warnings=tuple(warnings),
    )


def _prefetch(src: _PodReads, dst: _PodReads, src_node: _Node, dst_node: _Node, dst_pod: PodRef) -> None:
    """Fill the caches discovery reads from, in two rounds of reads at once (see `discover`)."""
    same_node = src_node is dst_node
    nodes = (src_node,) if same_node else (src_node, dst_node)
    _at_once(
        src.files, src.route, dst.files, dst.route,
        *(lambda n=n: n.links for n in nodes), *(lambda n=n: n.routes for n in nodes),
        *(() if same_node else (lambda: src_node.route_get(dst_pod.ip), lambda: src_node.neighbours,
                                lambda: src_node.fdb)),
    )
    second = []
    for reads, node in ((src, src_node), (dst, dst_node)):
        try:
            veth = node.link(ifindex=reads.parse()["iflink"])["ifname"]
        except Exception:  # noqa: BLE001 - read again, and reported, in order
            continue
        second.append(lambda node=node, veth=veth: node.veth_sysctls(veth))
    if not same_node:
        second.append(lambda: _underlay_route(src_node, dst_pod))
    _at_once(*second)


def _at_once(*reads: Callable[[], object]) -> None:
    """Run reads in threads and wait for all. A failure is left for the read in order to meet
    again (nothing is cached for it)."""
    def work(read: Callable[[], object]) -> None:
        try:
            read()
        except Exception:  # noqa: BLE001, S110 - see above
            pass

    threads = [threading.Thread(target=work, args=(r,), daemon=True, name="tracer-discover") for r in reads[1:]]
    for t in threads:
        t.start()
    if reads:
        work(reads[0])
    for t in threads:
        t.join()


class _Node:
    """Lazy, cached views of one node's state (`ip -j`, `bridge -j`, /proc/sys)."""

    def __init__(self, backend: Backend, name: str):
        self.backend = backend
        self.name = name
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, read: Callable[[], Any]) -> Any:
        """read() cached under key. (Not functools.cached_property: before Python 3.12 it holds
        one lock for all instances, and the two nodes' reads must run at once.)"""
        if key not in self._cache:
            self._cache[key] = read()
        return self._cache[key]

    def run(self, argv: Sequence[str]) -> str:
        res = self.backend.exec_node(self.name, argv)
        if res.returncode != 0:
            raise ClusterError(
                f"`{' '.join(argv)}` on node {self.name} failed: {res.stderr.decode(errors='replace').strip()}",
                hint="the node's side needs iproute2 (ip, bridge)",
            )
        return res.stdout.decode()

    def json(self, argv: Sequence[str]) -> list[dict[str, Any]]:
        return json.loads(self.run(argv) or "[]")

    @property
    def links(self) -> list[dict[str, Any]]:
        return self._once("links", lambda: self.json(["ip", "-j", "-d", "addr", "show"]))

    @property
    def routes(self) -> list[dict[str, Any]]:
        return self._once("routes", lambda: self.json(["ip", "-j", "route", "show"]))

    def link(self, *, ifindex: int | None = None, name: str | None = None) -> dict[str, Any]:
        for link in self.links:
            if link["ifindex"] == ifindex or link["ifname"] == name:
                return link
        raise ClusterError(f"node {self.name} has no interface {name or f'with ifindex {ifindex}'}")

    def link_with_address(self, ip: str) -> dict[str, Any] | None:
        return next((l for l in self.links if any(a.get("local") == ip for a in l.get("addr_info", []))), None)

    @property
    def neighbours(self) -> list[dict[str, Any]]:
        return self._once("neighbours", lambda: self.json(["ip", "-j", "neigh", "show"]))

    @property
    def fdb(self) -> list[dict[str, Any]]:
        return self._once("fdb", lambda: self.json(["bridge", "-j", "fdb", "show"]))

    def route_get(self, ip: str) -> dict[str, Any]:
        return self._once(f"route get {ip}", lambda: self.json(["ip", "-j", "route", "get", ip])[0])

    def route_for(self, ip: str) -> str:
        """The routing table entry the node uses for `ip`, as `ip route` prints it."""
        addr = ipaddress.ip_address(ip)
        best, best_len = None, -1
        for r in self.routes:
            net = ipaddress.ip_network("0.0.0.0/0" if r["dst"] == "default" else r["dst"], strict=False)
            if addr in net and net.prefixlen > best_len:
                best, best_len = r, net.prefixlen
        return _route_text(best) if best else "none"

    def sysctl(self, path: str) -> int | None:
        res = self.backend.exec_node(self.name, ["cat", f"/proc/sys/{path}"])
        return int(res.stdout) if res.returncode == 0 and res.stdout.strip() else None

    def veth_sysctls(self, veth: str) -> tuple[int | None, int | None]:
        """proxy_arp and proxy_delay of a host veth, read with one `cat` (one by one if that fails)."""
        paths = (f"net/ipv4/conf/{veth}/proxy_arp", f"net/ipv4/neigh/{veth}/proxy_delay")

        def read() -> tuple[int | None, int | None]:
            res = self.backend.exec_node(self.name, ["cat", *(f"/proc/sys/{p}" for p in paths)])
            words = res.stdout.split()
            if res.returncode == 0 and len(words) == 2 and all(w.isdigit() for w in words):
                return int(words[0]), int(words[1])
            return self.sysctl(paths[0]), self.sysctl(paths[1])

        return self._once(f"sysctls {veth}", read)

    def neighbour(self, dev: str, ip: str) -> str | None:
        for n in self.neighbours:
            if n.get("dev") == dev and n.get("dst") == ip:
                return n.get("lladdr")
        return None

    def fdb_dst(self, dev: str, mac: str) -> str | None:
        for entry in self.fdb:
            if entry.get("ifname", entry.get("dev")) == dev and entry.get("mac") == mac and entry.get("dst"):
                return entry["dst"]
        return None


def _route_text(route: dict[str, Any]) -> str:
    parts = [route["dst"]]
    if "gateway" in route:
        parts += ["via", route["gateway"]]
    parts += ["dev", route["dev"]]
    if route.get("scope") not in (None, "global", "universe"):
        parts += ["scope", route["scope"]]
    parts += route.get("flags", [])
    return " ".join(parts)


class _PodReads:
    """What discovery reads inside one pod, each read once: eth0's sysfs files, routes and ARP
    table (`cat`), and `ip route get` toward the other pod (when the pod has `ip`)."""

    FILES = ("/sys/class/net/eth0/iflink", "/sys/class/net/eth0/address", "/sys/class/net/eth0/mtu",
             "/proc/net/route", "/proc/net/arp")

    def __init__(self, backend: Backend, pod: PodRef, toward: str):
        self.backend, self.pod, self.toward = backend, pod, toward
        self._cache: dict[str, Any] = {}

    def files(self) -> ExecResult:
        if "files" not in self._cache:
            self._cache["files"] = self.backend.exec_pod(self.pod, ["cat", *self.FILES])
        return self._cache["files"]

    def route(self) -> str | None:
        if "route" not in self._cache:
            self._cache["route"] = _pod_route_get(self.backend, self.pod, self.toward)
        return self._cache["route"]

    def parse(self) -> dict[str, Any]:
        """eth0's iflink, mac and mtu, the pod's gateway and device toward the other pod, its ARP table."""
        res, pod = self.files(), self.pod
        lines = res.stdout.decode(errors="replace").splitlines()
        if res.returncode != 0 or len(lines) < 3:
            raise ClusterError(
                f"cannot read eth0 of pod {pod.name}: {res.stderr.decode(errors='replace').strip()}",
                hint="the pod needs `cat` and an eth0",
            )
        arp_at = next((i for i, l in enumerate(lines) if l.startswith("IP address")), len(lines))
        gateway, dev = _proc_route_lookup(lines[3:arp_at], self.toward)
        return {"iflink": int(lines[0]), "mac": lines[1].strip(), "mtu": int(lines[2]), "gateway": gateway,
                "dev": dev, "arp": _proc_arp(lines[arp_at + 1:])}


def _pod_end(reads: _PodReads, node: _Node) -> PodEnd:
    pod, toward = reads.pod, reads.toward
    f = reads.parse()
    gateway, dev = f["gateway"], f["dev"]
    route = reads.route() or (
        f"{toward} via {gateway} dev {dev} src {pod.ip}" if gateway else f"{toward} dev {dev} src {pod.ip}"
    )
    veth = node.link(ifindex=f["iflink"])
    name = veth["ifname"]
    proxy_arp, proxy_delay = node.veth_sysctls(name)
    return PodEnd(
        pod=pod, mac=f["mac"], mtu=f["mtu"], iflink=f["iflink"], route=route, gateway=gateway,
        gateway_mac=f["arp"].get(gateway) if gateway else None,
        host_veth=name, host_veth_mac=veth["address"], host_veth_ifindex=veth["ifindex"],
        proxy_arp=proxy_arp, proxy_delay=proxy_delay,
        node_route=node.route_for(pod.ip),
    )


def _pod_route_get(backend: Backend, pod: PodRef, ip: str) -> str | None:
    """`ip route get` as the exercise's step 3.1 runs it, when the pod has `ip`."""
    res = backend.exec_pod(pod, ["ip", "route", "get", ip])
    if res.returncode != 0:
        return None
    lines = res.stdout.decode(errors="replace").splitlines()
    words = lines[0].split() if lines else []
    if "uid" in words:  # "... src 172.18.166.139 uid 0": the uid says nothing about the way
        del words[words.index("uid"):words.index("uid") + 2]
    return " ".join(words) or None


def _hex_ip(h: str) -> str:
    """/proc/net/route's little-endian hex address as dotted quad."""
    return str(ipaddress.IPv4Address(struct.pack("<I", int(h, 16))))


def _proc_route_lookup(lines: Sequence[str], ip: str) -> tuple[str | None, str]:
    """Longest-prefix match in /proc/net/route: (gateway or None when on-link, device)."""
    addr = int(ipaddress.IPv4Address(ip))
    best: tuple[int, str | None, str] | None = None
    for line in lines[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        dst, gw, mask = (int(ipaddress.IPv4Address(_hex_ip(x))) for x in (f[1], f[2], f[7]))
        if addr & mask == dst and (best is None or mask > best[0]):
            best = (mask, _hex_ip(f[2]) if gw else None, f[0])
    if best is None:
        raise ClusterError(f"the pod has no route to {ip}")
    return best[1], best[2]


def _proc_arp(lines: Sequence[str]) -> dict[str, str]:
    """IP -> MAC of the complete entries in /proc/net/arp."""
    out = {}
    for line in lines:
        f = line.split()
        if len(f) >= 4 and int(f[2], 16) & 0x2:  # ATF_COM: resolved
            out[f[0]] = f[3]
    return out


def _end_warnings(end: PodEnd, node: _Node) -> list[str]:
    w = []
    where = f"{node.name}/{end.host_veth}"
    if end.proxy_arp != 1:
        w.append(f"proxy_arp is {end.proxy_arp} on {where}: nobody answers ARP for {end.gateway}")
    if end.gateway_mac and end.gateway_mac != end.host_veth_mac:
        w.append(f"pod {end.pod.name} holds {end.gateway_mac} for {end.gateway}, not {where}'s MAC {end.host_veth_mac}")
    if not any(r["dst"] == "default" for r in node.routes):
        w.append(f"node {node.name} has no default route: proxy-ARP will not answer for {end.gateway}")
    if f"dev {end.host_veth}" not in end.node_route:
        w.append(f"node {node.name} routes {end.pod.ip} as `{end.node_route}`, not via {end.host_veth}")
    return w


def _veth_point(end: PodEnd, node: _Node, direction: str) -> WayPoint:
    pod, veth = end.pod, end.host_veth
    if direction == "ingress":
        explanation = (
            f"{pod.name} routes via {end.gateway} dev eth0 (3.1); proxy-ARP on {veth}, the peer of "
            f"eth0@if{end.iflink} (3.2), answered with {end.host_veth_mac} (3.3/3.4), so the frame "
            f"enters {node.name} here, as the pod sent it."
        )
        eth = (end.mac, end.host_veth_mac)
    else:
        explanation = (
            f"{node.name} routes `{end.node_route}` and hands the packet, TTL-1 and with a new "
            f"Ethernet header from {end.host_veth_mac} to eth0's {end.mac}, into pod {pod.name}."
        )
        eth = (end.host_veth_mac, end.mac)
    return _point(node, node.link(ifindex=end.host_veth_ifindex), "pod-veth", direction, eth, explanation)


def _underlay_route(src: _Node, dst_pod: PodRef) -> None:
    """Reads (into src's caches) the route to the node behind the tunnel toward dst_pod, when
    the first round's tables name it; `_tunnel` checks everything and explains what is missing."""
    hop = src.route_get(dst_pod.ip)
    gateway = hop.get("gateway")
    mac = src.neighbour(hop["dev"], gateway) if gateway else None
    node_ip = src.fdb_dst(hop["dev"], mac) if mac else None
    if node_ip:
        src.route_get(node_ip)


def _tunnel(src: _Node, dst: _Node, dst_pod: PodRef) -> NodeTunnel:
    hop = src.route_get(dst_pod.ip)
    dev = src.link(name=hop["dev"])
    kind = dev.get("linkinfo", {}).get("info_kind")
    if kind != "vxlan":
        raise ClusterError(
            f"node {src.name} sends {dst_pod.ip} out of {hop['dev']} ({kind or 'no tunnel'})",
            hint="tracer knows the Calico VXLAN way so far (vxlan.calico)",
        )
    info = dev["linkinfo"]["info_data"]
    gateway = hop.get("gateway")
    if gateway is None:
        raise ClusterError(f"node {src.name} has no next hop for {dst_pod.ip} on {hop['dev']}")
    dst_mac = src.neighbour(hop["dev"], gateway)
    if dst_mac is None:
        raise ClusterError(f"node {src.name} has no neighbour entry for {gateway} on {hop['dev']}",
                           hint="Calico programs it statically; is calico-node running on both nodes?")
    dst_node_ip = src.fdb_dst(hop["dev"], dst_mac)
    if dst_node_ip is None:
        raise ClusterError(f"node {src.name} has no FDB entry for {dst_mac} on {hop['dev']}")
    under_src = src.link(name=src.route_get(dst_node_ip)["dev"])
    under_dst = dst.link_with_address(dst_node_ip)
    if under_dst is None:
        raise ClusterError(f"the FDB entry on {src.name} sends to {dst_node_ip}, but node {dst.name} has no such address")
    return NodeTunnel(
        device=hop["dev"], vni=info["id"], udp_port=info.get("port", 4789), mtu=dev["mtu"],
        src_mac=dev["address"], dst_mac=dst_mac, dst_tunnel_ip=gateway,
        src_node_ip=info.get("local", ""), dst_node_ip=dst_node_ip, route=src.route_for(dst_pod.ip),
        underlay_src=under_src["ifname"], underlay_src_mac=under_src["address"],
        underlay_dst=under_dst["ifname"], underlay_dst_mac=under_dst["address"],
    )


def _tunnel_points(t: NodeTunnel, src: _Node, dst: _Node, src_end: PodEnd, dst_end: PodEnd) -> list[WayPoint]:
    dst_dev = next((l for l in dst.links if l["address"] == t.dst_mac), None)
    if dst_dev is None:
        raise ClusterError(f"node {dst.name} has no tunnel device with MAC {t.dst_mac}",
                           hint=f"the neighbour entry on {src.name} is stale")
    outer = (t.underlay_src_mac, t.underlay_dst_mac)
    inner = (t.src_mac, t.dst_mac)
    encap = f"VXLAN VNI {t.vni}, UDP to {t.udp_port}, outer {t.src_node_ip} -> {t.dst_node_ip}"
    return [
        _point(src, src.link(name=t.device), "tunnel", "egress", inner,
               f"{src.name} routes `{t.route}`: TTL-1, and the Ethernet header becomes "
               f"{t.src_mac} -> {t.dst_mac} ({dst.name}'s {t.device}, a permanent neighbour entry)."),
        _point(src, src.link(name=t.underlay_src), "underlay", "egress", outer,
               f"The FDB entry for {t.dst_mac} says dst {t.dst_node_ip}: {t.device} wraps the frame "
               f"({encap}, +50 bytes) and it leaves {src.name} on the underlay NIC."),
        _point(dst, dst.link(name=t.underlay_dst), "underlay", "ingress", outer,
               f"Step 4: the same encapsulated packet ({encap}) arrives on {dst.name}'s underlay NIC."),
        _point(dst, dst_dev, "tunnel", "ingress", inner,
               f"UDP port {t.udp_port} belongs to {dst_dev['ifname']}: the kernel strips the outer "
               f"headers and the inner frame, unchanged since {src.name}'s {t.device}, appears here."),
    ]


def _point(node: _Node, link: dict[str, Any], role: str, direction: str, eth: tuple[str, str],
           explanation: str) -> WayPoint:
    """A capture point on `link` (an `ip -j link` entry) of `node`."""
    return WayPoint(
        node=node.name, interface=link["ifname"], role=role, mac=link["address"], ifindex=link["ifindex"],
        direction=direction, eth_src=eth[0], eth_dst=eth[1], explanation=explanation,
    )
