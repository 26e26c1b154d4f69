"""What `tracer follow SRC DST` sends its request to, from DST as users type it: a pod, a Service
(`svc/NAME`, its ClusterIP) or a URL (`http://httpbin/get`, `http://10.152.183.50/`), the way
then being the one to the Service's endpoint pod (kube-proxy's DNAT on the source node), and
the kube-proxy rule that does it read from that node's nat table.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from collections.abc import Sequence

from tracer.cluster.discover import discover
from tracer.cluster.ports import Backend
from tracer.errors import UsageError
from tracer.model import ServiceRef, Way

CLUSTER_SUFFIXES = ("svc.cluster.local", "svc")
"""What may follow `NAME.NAMESPACE` in a Service's DNS name (the pod's search path adds it)."""


@dataclass(frozen=True, kw_only=True)
class Target:
    pod: str
    """The pod the request reaches: DST itself, or the Service's endpoint."""
    url: str
    """What curl asks for, as the user gave it (a name stays a name: the pod's resolver does DNS)."""
    service: ServiceRef | None = None


def resolve(backend: Backend, dst: str, port: int, path: str, namespace: str | None = None) -> Target:
    """DST as a pod, `svc/NAME`, a ClusterIP or a URL; `port` and `path` for the first three."""
    if dst.startswith("svc/"):
        svc = backend.service(dst[4:], namespace)
        return _to_service(svc, f"http://{svc.cluster_ip}:{svc.port}{path}")
    if "://" in dst:
        parts = urlsplit(dst)
        if parts.scheme != "http" or not parts.hostname:
            raise UsageError(f"{dst}: tracer follows http:// URLs", hint="e.g. tracer follow curl http://httpbin/get")
        host = parts.hostname
        if _is_ip(host):
            return _to_service(backend.service("", cluster_ip=host), dst)
        name, ns = _service_name(host, namespace)
        return _to_service(backend.service(name, ns), dst)
    if _is_ip(dst):
        svc = backend.service("", cluster_ip=dst)
        return _to_service(svc, f"http://{dst}:{svc.port}{path}")
    return Target(pod=dst, url="")


@dataclass(frozen=True, kw_only=True)
class Request:
    """Where a follow's (or watch's) request goes: its way, what curl asks, the port to filter on."""

    way: Way
    url: str
    port: int
    """The TCP port at the endpoint (a Service's target port)."""


def request_way(backend: Backend, src: str, dst: str, port: int, path: str, points: Sequence[str] = ()) -> Request:
    """DST resolved (`resolve`), the way discovered to its pod, with the kube-proxy rule of a Service."""
    target = resolve(backend, dst, port, path)
    way = discover(backend, src, target.pod, points)
    if target.service is not None:
        way = with_rule(backend, way, target.service)
    return Request(way=way, url=target.url or f"http://{way.dst.pod.ip}:{port}{path}",
                   port=target.service.target_port if target.service else port)


def _to_service(svc: ServiceRef, url: str) -> Target:
    if len(svc.endpoints) != 1:
        have = ", ".join(svc.endpoints) or "none"
        raise UsageError(f"Service {svc.namespace}/{svc.name} has {len(svc.endpoints)} endpoints ({have}): tracer "
                         "follows a Service with one endpoint so far", hint="follow one of its pods by name")
    return Target(pod=svc.endpoints[0], url=url, service=svc)


def _service_name(host: str, namespace: str | None) -> tuple[str, str | None]:
    """`httpbin`, `httpbin.default`, `httpbin.default.svc[.cluster.local]` -> (name, namespace)."""
    for suffix in CLUSTER_SUFFIXES:
        if host.endswith("." + suffix):
            host = host[: -len(suffix) - 1]
            break
    name, _, ns = host.partition(".")
    if not name or "." in ns:
        raise UsageError(f"{host}: not a Service's name (NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc.cluster.local)")
    return name, ns or namespace


def _is_ip(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def with_rule(backend: Backend, way: Way, svc: ServiceRef) -> Way:
    """The way to the endpoint, addressed to the Service, with the kube-proxy rule of the source
    node that DNATs it there (its nat table, as iptables-save prints it; "" where none is read)."""
    endpoint = f"{way.dst.pod.ip}:{svc.target_port}"
    res = backend.exec_node(way.src.pod.node, ["iptables-save", "-t", "nat"])
    text = res.stdout.decode(errors="replace") if res.returncode == 0 else ""
    sep = next((m.group(1) for m in re.finditer(r"^-A (KUBE-SEP-\S+) .*-j DNAT --to-destination (\S+)", text, re.M)
                if m.group(2) == endpoint), None)
    svc_chain = next((m.group(1) for m in re.finditer(r"^-A (KUBE-SVC-\S+) .*-j (\S+)$", text, re.M)
                      if m.group(2) == sep), None) if sep else None
    rule = f"{svc_chain} -> {sep}: DNAT --to-destination {endpoint}" if sep else ""
    return replace(way, service=replace(svc, rule=rule))
