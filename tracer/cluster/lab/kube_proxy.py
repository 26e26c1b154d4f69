"""The lab's kube-proxy and cluster DNS: every node's nat table as kube-proxy's iptables mode
writes it for the topology's Services (or its nftables table, `lab up --kube-proxy nftables`),
and the DNS pod's server (a real one: dnsmasq) with the resolv.conf kubelet gives pods (facts:
DATAPATHS.md §7, §8; the nftables mode from pkg/proxy/nftables/proxier.go).

The rules are those of kube-proxy's proxier (its chain names, comments, the MARK/MASQUERADE
pair, one `statistic` rule per endpoint but the last), loaded with iptables-restore, so that
`tracer lab exec worker1 -- iptables-save -t nat` reads like a real node's. In nftables mode,
as its proxier writes them: the table `ip kube-proxy`, base chains hooked at prerouting and
output (dstnat) jumping to `services`, whose `vmap @service-ips` sends a ClusterIP . protocol .
port to `service-HASH-ns/name/proto/port` (HASH: base32(sha256(that name))[:8]), which marks
for masquerade what comes from outside the cluster and picks an `endpoint-HASH-...__ip/port`
chain with `numgen random mod N`; that chain DNATs (`dnat to`); `nat-postrouting` masquerades
what is marked. Loaded with `nft -f`, read back with `nft list table ip kube-proxy`. `ip netns exec`
bind-mounts /etc/netns/<namespace>/resolv.conf over /etc/resolv.conf: that is where each pod's
resolver configuration goes (removed with the lab).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

from tracer.cluster.lab import netns
from tracer.cluster.lab.topology import CLUSTER_DOMAIN, DNS_POD, Names, ServicePort, ServiceSpec, Topology

MASQ_MARK = "0x4000/0x4000"
NETNS_ETC = Path("/etc/netns")
"""Where `ip netns exec NAME` finds files to bind-mount over /etc (iproute2's ip-netns(8))."""
DNS_SERVER = "dnsmasq"


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(svc: ServiceSpec, port: ServicePort) -> str:
    """kube-proxy's servicePortChainName: KUBE-SVC- + base32(sha256("ns/name:port" + protocol))[:16]."""
    return "KUBE-SVC-" + _hash16(f"{svc.namespace}/{svc.name}:{port.name}{port.protocol}")


def sep_chain(svc: ServiceSpec, port: ServicePort, endpoint: str) -> str:
    """kube-proxy's servicePortEndpointChainName: the same, with the endpoint's "ip:port" added."""
    return "KUBE-SEP-" + _hash16(f"{svc.namespace}/{svc.name}:{port.name}{port.protocol}{endpoint}")


def nat_table(topology: Topology) -> str:
    """The nat table kube-proxy writes on every node for the topology's Services (iptables-restore)."""
    ips = {p.name: p.ip for p in topology.pods}
    chains = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE '
        "--random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
    ]
    services, tail = [], []
    for svc in topology.services:
        for port in svc.ports:
            name = f"{svc.namespace}/{svc.name}:{port.name}"
            svc_c = svc_chain(svc, port)
            chains.append(svc_c)
            match = f"-d {svc.cluster_ip}/32 -p {port.protocol} -m {port.protocol} --dport {port.port}"
            services.append(f'-A KUBE-SERVICES {match} -m comment --comment "{name} cluster IP" -j {svc_c}')
            tail.append(f'-A {svc_c} ! -s {topology.cluster_cidr} {match} -m comment --comment "{name} cluster IP" '
                        "-j KUBE-MARK-MASQ")
            endpoints = [f"{ips[pod]}:{port.target_port}" for pod in svc.endpoints if pod in ips]
            for i, ep in enumerate(endpoints):
                sep_c = sep_chain(svc, port, ep)
                chains.append(sep_c)
                left = len(endpoints) - i
                chance = f" -m statistic --mode random --probability {1 / left:.10f}" if left > 1 else ""
                tail.append(f'-A {svc_c} -m comment --comment "{name} -> {ep}"{chance} -j {sep_c}')
                tail.append(f'-A {sep_c} -s {ep.split(":")[0]}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
                tail.append(f'-A {sep_c} -p {port.protocol} -m comment --comment "{name}" -m {port.protocol} '
                            f"-j DNAT --to-destination {ep}")
    services.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                    'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    lines = ["*nat", *(f":{c} - [0:0]" for c in chains), *rules, *services, *tail, "COMMIT"]
    return "\n".join(lines) + "\n"


def _hash8(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]


def nft_service_chain(svc: ServiceSpec, port: ServicePort) -> str:
    """kube-proxy's nftables servicePortChainNameBase with its prefix: service-HASH-ns/name/proto/port."""
    name = f"{svc.namespace}/{svc.name}/{port.protocol}/{port.name}"
    return f"service-{_hash8(name)}-{name}"


def nft_endpoint_chain(svc: ServiceSpec, port: ServicePort, endpoint: str) -> str:
    """servicePortEndpointChainNameBase: endpoint-HASH-ns/name/proto/port__ip/port."""
    ip, _, target = endpoint.rpartition(":")
    name = f"{svc.namespace}/{svc.name}/{port.protocol}/{port.name}__{ip}/{target}"
    return f"endpoint-{_hash8(name)}-{name}"


def nft_ruleset(topology: Topology) -> str:
    """The table kube-proxy's nftables mode writes on every node (`nft -f`)."""
    ips = {p.name: p.ip for p in topology.pods}
    t = "ip kube-proxy"
    out = [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}",
        f"add chain {t} services",
        f"add chain {t} masquerading",
        f"add chain {t} mark-for-masquerade",
        f"add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f'add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} mark-for-masquerade mark set mark or 0x4000",
        f"add rule {t} masquerading mark and 0x4000 == 0 return",
        f"add rule {t} masquerading mark set mark xor 0x4000",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
    ]
    for svc in topology.services:
        out.append(f"add element {t} cluster-ips {{ {svc.cluster_ip} }}")
        for port in svc.ports:
            chain = nft_service_chain(svc, port)
            endpoints = [f"{ips[pod]}:{port.target_port}" for pod in svc.endpoints if pod in ips]
            out += [f"add chain {t} {chain}",
                    f"add rule {t} {chain} ip daddr {svc.cluster_ip} {port.protocol} dport {port.port} "
                    f"ip saddr != {topology.cluster_cidr} jump mark-for-masquerade"]
            picks = []
            for i, ep in enumerate(endpoints):
                ep_chain = nft_endpoint_chain(svc, port, ep)
                picks.append(f"{i} : goto {ep_chain}")
                out += [f"add chain {t} {ep_chain}",
                        f"add rule {t} {ep_chain} ip saddr {ep.split(':')[0]} jump mark-for-masquerade",
                        f"add rule {t} {ep_chain} meta l4proto {port.protocol} dnat to {ep}"]
            if picks:
                out.append(f"add rule {t} {chain} numgen random mod {len(picks)} vmap {{ {' , '.join(picks)} }}")
                out.append(f"add element {t} service-ips {{ {svc.cluster_ip} . {port.protocol} . {port.port} : "
                           f"goto {chain} }}")
    return "\n".join(out) + "\n"


KUBE_PROXY_MODES = ("iptables", "nftables")


def program(topology: Topology, names: Names) -> None:
    """Every node's kube-proxy rules, as kube-proxy in the topology's mode would have them."""
    if not topology.services:
        return
    if topology.kube_proxy == "nftables":
        text, argv = nft_ruleset(topology), ["nft", "-f", "-"]
    else:
        text, argv = nat_table(topology), ["iptables-restore"]
    for node in topology.nodes:
        netns.run(netns.exec_argv(names.netns(node.name), argv), input=text, what=f"{argv[0]} on {node.name}")


def resolv_conf(topology: Topology, namespace: str) -> str:
    """What kubelet writes for a ClusterFirst pod: the cluster DNS, the search path, ndots:5."""
    dns = next(s for s in topology.services if DNS_POD in s.endpoints)
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver {dns.cluster_ip}\noptions ndots:5\n"


def resolv_conf_dirs(topology: Topology, names: Names) -> list[str]:
    """Where each pod's resolv.conf goes (`ip netns exec` takes it from there); none without DNS."""
    if not any(DNS_POD in s.endpoints for s in topology.services):
        return []
    return [str(NETNS_ETC / names.netns(pod.name)) for pod in topology.pods]


def write_resolv_confs(topology: Topology, names: Names) -> None:
    """Each pod's resolv.conf, in the directories `resolv_conf_dirs` names (journaled before)."""
    for pod, d in zip(topology.pods, resolv_conf_dirs(topology, names)):
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "resolv.conf").write_text(resolv_conf(topology, pod.namespace))


def remove_etc(directories: list[str], prefix: str) -> None:
    """The /etc/netns directories the lab made (only those of its own prefix)."""
    for d in directories:
        if Path(d).parent == NETNS_ETC and Path(d).name.startswith(prefix):
            shutil.rmtree(d, ignore_errors=True)


def dns_argv(topology: Topology, pod_ip: str) -> list[str]:
    """dnsmasq as the cluster DNS: authoritative for cluster.local (unknown names NXDOMAIN),
    each Service's A record under its three search forms' full name, nothing forwarded."""
    records = [f"--host-record={s.name}.{s.namespace}.svc.{CLUSTER_DOMAIN},{s.cluster_ip}" for s in topology.services]
    return [DNS_SERVER, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll", f"--local=/{CLUSTER_DOMAIN}/",
            f"--listen-address={pod_ip}", "--bind-interfaces", "--port=53", "--user=root", "--pid-file=",
            "--log-queries", "--log-facility=-", *records]
