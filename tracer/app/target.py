"""What `tracer follow SRC DST` sends its request to, from DST as users type it: a pod, a Service
(`svc/[NAMESPACE/]NAME`, its ClusterIP) or a URL (`http://httpbin/get`, `http://10.152.183.50/`), the way
then being the one to the Service's endpoint pod (kube-proxy's DNAT on the source node), and
the kube-proxy rule that does it read from that node's nat table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from collections.abc import Sequence

from tracer.cluster.discover import discover
from tracer.cluster.ports import Backend
from tracer.errors import NotFoundError, TracerError, UsageError
from tracer.model import ServiceRef, Way
from tracer.model.way import is_ipv4

CLUSTER_SUFFIXES = ("svc.cluster.local", "svc")
"""What may follow `NAME.NAMESPACE` in a Service's DNS name (the pod's search path adds it)."""


@dataclass(frozen=True, kw_only=True)
class Target:
    pod: str
    """The pod the request reaches: DST itself, or the Service's endpoint."""
    url: str
    """What curl asks for, as the user gave it (a name stays a name: the pod's resolver does DNS)."""
    service: ServiceRef | None = None
    others: tuple[str, ...] = ()
    """The Service's other endpoints: kube-proxy picks one of them all per connection."""


def resolve(backend: Backend, dst: str, port: int, path: str, namespace: str | None = None) -> Target:
    """DST as a pod, `svc/NAME`, a ClusterIP or a URL; `port` and `path` for the first three."""
    if dst.startswith("svc/"):  # svc/[NAMESPACE/]NAME
        ns, _, name = dst[4:].rpartition("/")
        if not name or "/" in ns:
            raise UsageError(f"{dst}: not svc/[NAMESPACE/]NAME", hint="e.g. svc/httpbin, svc/kube-system/kube-dns")
        svc = backend.service(name, ns or namespace)
        return _to_service(svc, f"http://{svc.cluster_ip}:{svc.port}{path}")
    if "://" in dst:
        parts = urlsplit(dst)
        if parts.scheme != "http" or not parts.hostname:
            raise UsageError(f"{dst}: tracer follows http:// URLs", hint="e.g. tracer follow curl http://httpbin/get")
        host = parts.hostname.removesuffix(".")  # (an absolute name: the same Service)
        if ":" in host:
            raise UsageError(f"{dst}: tracer follows IPv4 Services so far")
        try:
            url_port = parts.port
        except ValueError:
            raise UsageError(f"{dst}: not a port") from None
        svc = backend.service("", cluster_ip=host) if _is_ip(host) else backend.service(*_service_name(host, namespace))
        if url_port is not None and url_port != svc.port:
            raise UsageError(f"{dst}: Service {svc.namespace}/{svc.name} has port {svc.port}, not {url_port}",
                             hint=f"http://{host}:{svc.port}{parts.path or '/'}")
        return _to_service(svc, dst)
    if _is_ip(dst):
        svc = backend.service("", cluster_ip=dst)
        return _to_service(svc, f"http://{dst}:{svc.port}{path}")
    return Target(pod=dst, url="")


@dataclass(frozen=True, kw_only=True)
class DnsWay:
    """The way of the source pod's DNS query: to the cluster DNS Service's one pod."""

    way: Way
    service: ServiceRef
    """The cluster DNS Service (kube-system/kube-dns): its ClusterIP is what the pod asks."""
    others: tuple[Way, ...] = ()
    """The ways to its other pods (kubeadm runs two CoreDNS): kube-proxy picks one per query."""

    @property
    def ways(self) -> tuple[Way, ...]:
        return (self.way, *self.others)


@dataclass(frozen=True, kw_only=True)
class Request:
    """Where a follow's (or watch's) request goes: its way, what curl asks, the port to filter on."""

    way: Way
    url: str
    port: int
    """The TCP port at the endpoint (a Service's target port)."""
    dns: DnsWay | None = None
    """Where a URL's name is looked up (a name, not an address, and a cluster DNS to capture)."""
    others: tuple[Way, ...] = ()
    """The ways to a Service's other endpoints (each with its own kube-proxy rule): every
    connection takes one of `way` and these, kube-proxy's pick; the captures cover them all."""


CLUSTER_DNS = ("kube-dns", "kube-system")
"""The cluster DNS Service as kubeadm, microk8s and k3s name it (CoreDNS behind it)."""
MAX_DNS_PODS = 4
"""DNS pods whose ways a follow captures at most (each adds its node's points)."""


def request_way(backend: Backend, src: str, dst: str, port: int, path: str, points: Sequence[str] = ()) -> Request:
    """DST resolved (`resolve`), the way discovered to its pod, with the kube-proxy rule of a
    Service; for a URL by name, also the way of the DNS query the pod's resolver makes."""
    target = resolve(backend, dst, port, path)
    states: dict = {}  # (node -> its state, read once for every way: they share the source node)
    way = discover(backend, src, target.pod, points, states=states)
    others = tuple(discover(backend, src, pod, points, states=states) for pod in target.others)
    if target.service is not None:
        nat = nat_table(backend, way.src.pod.node)  # (one read: every endpoint's way starts on that node)
        way = with_rule(way, target.service, nat)
        others = tuple(with_rule(w, target.service, nat) for w in others)
    host = urlsplit(target.url).hostname if target.url else None
    dns = dns_way(backend, src, states) if host and not _is_ip(host) else None
    return Request(way=way, url=target.url or f"http://{way.dst.pod.ip}:{port}{path}",
                   port=target.service.target_port if target.service else port, dns=dns, others=others)


def endpoint_documents(others: Sequence[Way]) -> list[dict]:
    """The `endpoints` key of path.json and `tracer path -o json` (tracer.path/v1, added): the
    ways to a Service's other endpoints, each a way's document."""
    return [w.to_dict() for w in others]


def dns_document(dns: DnsWay) -> dict:
    """The `dns` key of path.json and `tracer path -o json` (tracer.path/v1, added): the query's
    way as a way's document, its `service` the DNS Service asked; its ClusterIP and the pod
    behind it beside."""
    return {**replace(dns.way, service=dns.service).to_dict(), "cluster_ip": dns.service.cluster_ip,
            "pod": dns.way.dst.pod.name, "others": [w.to_dict() for w in dns.others]}


def dns_way(backend: Backend, src: str, states: dict | None = None) -> DnsWay | None:
    """The ways from `src` to the cluster DNS Service's pods (kube-proxy picks one per query: all
    are captured, up to MAX_DNS_PODS), where there is one to capture: None without such a
    Service or where no way can be found (the HTTP request is followed all the same)."""
    try:
        svc = backend.service(*CLUSTER_DNS)  # (its port 53, TCP and UDP alike)
        if not svc.endpoints:
            return None
        ways = []
        for pod in svc.endpoints[:MAX_DNS_PODS]:
            try:
                ways.append(discover(backend, src, pod, states=states))
            except TracerError:
                continue  # (a pod whose way cannot be read: the others still are)
        return DnsWay(way=ways[0], service=svc, others=tuple(ways[1:])) if ways else None
    except TracerError:
        return None



def _to_service(svc: ServiceRef, url: str) -> Target:
    if not svc.endpoints:
        raise NotFoundError(f"Service {svc.namespace}/{svc.name} has no endpoints: no ready pod behind it to follow to",
                            hint=f"kubectl get endpointslices -n {svc.namespace} -l kubernetes.io/service-name={svc.name}")
    return Target(pod=svc.endpoints[0], url=url, service=svc, others=svc.endpoints[1:])


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


_is_ip = is_ipv4


IPTABLES_SAVE = ("iptables-save", "iptables-legacy-save")
"""What reads a node's nat table: the default backend's, then the legacy one's."""
NFT_LIST = ("nft", "list", "table", "ip", "kube-proxy")
"""kube-proxy's table in its nftables mode (one table, `ip kube-proxy`, for IPv4)."""


def nat_table(backend: Backend, node: str) -> list[str]:
    """kube-proxy's rules on a node: its nat table as iptables-save prints it, with kube-proxy's
    chains where it has them (the default backend's first, nft on Debian, then the legacy one's:
    kube-proxy may have written with it; iptables-save only warns about its tables); else, in
    kube-proxy's nftables mode, its table as `nft list table ip kube-proxy` prints it; [] where
    neither can be read (no such tool in the image, IPVS mode, another proxy)."""
    lines: list[str] = []
    for tool in IPTABLES_SAVE:
        res = backend.exec_node(node, [tool, "-t", "nat"])
        lines = (res.stdout.decode(errors="replace") if res.returncode == 0 else "").splitlines()
        if any(line.startswith("-A KUBE-SERVICES ") for line in lines):
            return lines
    res = backend.exec_node(node, list(NFT_LIST))
    if res.returncode == 0 and res.stdout.lstrip().startswith(b"table ip kube-proxy"):
        return res.stdout.decode(errors="replace").splitlines()
    return lines


def with_rule(way: Way, svc: ServiceRef, lines: list[str]) -> Way:
    """The way to the endpoint, addressed to the Service, with the kube-proxy rule of the source
    node that DNATs it there (found in `lines`, its rules: nat_table; "" where none is)."""
    endpoint = f"{way.dst.pod.ip}:{svc.target_port}"
    nft = bool(lines) and lines[0].lstrip().startswith("table ip kube-proxy")
    rule = _nft_rule(lines, svc, endpoint) if nft else _iptables_rule(lines, svc, endpoint)
    return replace(way, service=replace(svc, rule=rule))


def _iptables_rule(lines: list[str], svc: ServiceRef, endpoint: str) -> str:
    # KUBE-SERVICES' rule for this ClusterIP, TCP and port -> its KUBE-SVC chain -> the KUBE-SEP
    # chain of that chain whose DNAT goes to the endpoint (a port of another protocol has its own)
    ip, port = f"-d {svc.cluster_ip}/32 ", f"--dport {svc.port} "
    svc_chain = next((line.rsplit(" -j ", 1)[1] for line in lines if line.startswith("-A KUBE-SERVICES ")
                      and ip in line and "-p tcp " in line and port in line and " -j KUBE-SVC-" in line), None)
    seps = {line.rsplit(" -j ", 1)[1] for line in lines if svc_chain and line.startswith(f"-A {svc_chain} ")
            and " -j KUBE-SEP-" in line}
    sep = next((line.split()[1] for line in lines if line.split()[1:2] and line.split()[1] in seps
                and line.endswith(f"-j DNAT --to-destination {endpoint}")), None)
    return f"{svc_chain} -> {sep}: DNAT --to-destination {endpoint}" if sep else ""


_NFT_CHAIN = re.compile(r"\s*chain (\S+) \{\s*$")
_NFT_TARGET = re.compile(r"\b(?:goto|jump) ([A-Za-z0-9_./-]+)")


def _nft_rule(lines: list[str], svc: ServiceRef, endpoint: str) -> str:
    """In kube-proxy's nftables table: the service-ips map's element for this ClusterIP, TCP and
    port (`IP . tcp . PORT : goto service-HASH-ns/name/tcp/port`) -> that chain's endpoint chains
    (its `numgen random mod N vmap { 0 : goto endpoint-..., ... }`, or a `jump` with session
    affinity) -> the one whose `dnat to` is the endpoint (pkg/proxy/nftables/proxier.go)."""
    text = "\n".join(lines)
    key = re.compile(rf"(?<![\d.]){re.escape(svc.cluster_ip)} \. tcp \. {svc.port} : goto ([A-Za-z0-9_./-]+)")
    m = key.search(text)
    if m is None:
        return ""
    chains = _nft_chains(lines)
    service = m.group(1)
    own = chains.get(service, [])
    dnat = re.compile(rf"\bdnat to {re.escape(endpoint)}(?![\d.:])")
    ip, _, port = endpoint.rpartition(":")
    mapped = re.compile(rf"(?<![\d.]){re.escape(ip)} \. {port}(?!\d)")
    for line in own:  # (kube-proxy without per-endpoint chains: the service chain DNATs itself)
        if dnat.search(line):
            return f"{service}: dnat to {endpoint}"
        if "dnat ip addr . port to" in line and mapped.search(line):
            return f"{service}: dnat ip addr . port to {ip} . {port} (numgen map)"
    targets = [t for line in own for t in _NFT_TARGET.findall(line) if t in chains]
    sep = next((t for t in targets if any(dnat.search(line) for line in chains[t])), None)
    return f"{service} -> {sep}: dnat to {endpoint}" if sep else ""


def _nft_chains(lines: list[str]) -> dict[str, list[str]]:
    """chain name -> its rule lines, from `nft list` output (a chain's block ends at its `}`)."""
    chains: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        m = _NFT_CHAIN.match(line)
        if m:
            current = chains.setdefault(m.group(1), [])
        elif current is not None:
            if line.strip() == "}":
                current = None
            else:
                current.append(line.strip())
    return chains
