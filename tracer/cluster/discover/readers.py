"""The node and pod state discovery reads, each read once, and the parsers of what comes back.

Nothing here knows a data path or the lab: it reads through a `Backend`, so the lab and the
Kubernetes backend plug in the same way. Pod side commands are busybox-safe (`cat` of /sys and
/proc, `ip route get` only if present); node side commands use `ip -j`, `bridge -j` and
`cat /proc/sys/...`.
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
from tracer.model import PodRef

Read = Callable[[], object]
"""One read that fills a cache (its value is not used: the read in order takes it from there)."""


def read_at_once(*reads: Read) -> None:
    """Run reads in threads and wait for all (each is a process on the lab, an exec round trip on
    Kubernetes). A failure is left for the read in order to meet again (nothing is cached for it)."""
    def work(read: Read) -> None:
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


class NodeState:
    """Lazy, cached views of one node's state (`ip -j`, `bridge -j`, /proc/sys)."""

    def __init__(self, backend: Backend, name: str):
        self.backend = backend
        self.name = name
        self._cache: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _once(self, key: str, read: Callable[[], Any]) -> Any:
        """read() cached under key, read once even when threads ask at the same time (the
        others wait for it: read_at_once's threads and the reads in order meet on the same
        tables). Not functools.cached_property: before Python 3.12 it holds one lock for all
        instances, and the two nodes' reads must run at once."""
        if key in self._cache:
            return self._cache[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
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
        return json.loads(self.run(argv) or "[]", object_pairs_hook=_first_wins)

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

    def device_toward(self, ip: str) -> dict[str, Any]:
        """The interface (an `ip -j link` entry) the node sends packets for `ip` out of: what
        tells a data path its way (a vxlan device, an ipip device, a bridge)."""
        return self.link(name=self.route_get(ip)["dev"])

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


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose repeated keys keep their first value, the others as `encap_<key>`:
    `ip -j route` prints a lightweight tunnel's `dst` (`encap ip id 5 dst 192.168.56.12`) after
    the route's own `dst`, under the same key."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            out[f"encap_{k}"] = v
        else:
            out[k] = v
    return out


def _route_text(route: dict[str, Any]) -> str:
    parts = [route["dst"]]
    if "gateway" in route:
        parts += ["via", route["gateway"]]
    if route.get("encap"):
        parts += ["encap", route["encap"], "id", str(route.get("id")), "dst", str(route.get("encap_dst"))]
    parts += ["dev", route["dev"]]
    if route.get("scope") not in (None, "global", "universe"):
        parts += ["scope", route["scope"]]
    parts += route.get("flags", [])
    return " ".join(parts)


class PodReads:
    """What discovery reads inside one pod, each read once: eth0's sysfs files, routes and ARP
    table (`cat`), and `ip route get` toward the other pod (when the pod has `ip`)."""

    FILES = ("/sys/class/net/eth0/iflink", "/sys/class/net/eth0/address", "/sys/class/net/eth0/mtu",
             "/proc/net/route", "/proc/net/arp")

    def __init__(self, backend: Backend, pod: PodRef, toward: str):
        self.backend, self.pod, self.toward = backend, pod, toward
        self._cache: dict[str, Any] = {}
        self.from_node = False
        """The pod could not be read inside (no `cat`): its end was read from its node."""

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


def _ip_from_proc_hex(h: str) -> str:
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
        dst, gw, mask = (int(ipaddress.IPv4Address(_ip_from_proc_hex(x))) for x in (f[1], f[2], f[7]))
        if addr & mask == dst and (best is None or mask > best[0]):
            best = (mask, _ip_from_proc_hex(f[2]) if gw else None, f[0])
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
