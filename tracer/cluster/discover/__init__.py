"""Discovery: the expected way of a request between two pods, from the live state of pods and nodes.

The exercise's steps 3.1-3.4 done automatically (pod route and ARP table, veth peer ifindex ->
host interface, proxy_arp: tracer.cluster.discover.pod_ends, the same for every CNI) and the
step 4 it leaves empty (the way between the nodes), which a data path knows: one module per CNI
way, registered in `DATA_PATHS`, each telling from the source node's state whether the way is
its own (e.g. the route to the other pod goes out of a vxlan device) and building the tunnel
and its capture points. State is read through a `Backend`, each read once (tracer.cluster.discover.readers).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from collections.abc import Sequence
from typing import Protocol, cast

from tracer.cluster.discover.pod_ends import capture_point, end_points, end_warnings, pod_end
from tracer.cluster.discover.readers import NodeState, PodReads, Read, read_at_once
from tracer.cluster.ports import Backend
from tracer.errors import ClusterError, NotFoundError, UsageError
from tracer.model import NodeTunnel, PodEnd, PodRef, Way, WayPoint

__all__ = ["DATA_PATHS", "DataPath", "data_paths", "discover"]

DATA_PATHS = (
    "tracer.cluster.discover.flannel_vxlan",
    "tracer.cluster.discover.cilium",
    "tracer.cluster.discover.calico_vxlan",
    "tracer.cluster.discover.calico_ipip",
    "tracer.cluster.discover.routed",
)
"""The data paths discovery knows, tried in this order (the first that recognizes the source
node's state wins: Flannel's and Cilium's vxlan devices before Calico's, which takes any other
vxlan device; routed last, which takes a route via another host): modules that are a `DataPath`.
A data path with a new encapsulation also needs its underlay filter in tracer.cluster.filters."""


class DataPath(Protocol):
    """What a data-path module provides (its functions read the state through `NodeState`,
    whose reads are cached: what `reads_ahead` fetched is not read again)."""

    NAME: str
    """How the hint names this way when none knows the state, e.g. `Calico VXLAN`."""
    DEVICE: str
    """Its tunnel device's name, for the same hint, e.g. `vxlan.calico`."""

    def reads_ahead(self, src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
        """Reads of the source node to do with discovery's first round, before the way is known."""

    def recognizes(self, src: NodeState, dst_pod: PodRef) -> bool:
        """Whether the source node's state toward dst_pod is this data path's way."""

    def reads_after(self, src: NodeState, dst_pod: PodRef) -> Sequence[Read]:
        """Once recognized: the reads the first round's tables name, done at once in the second."""

    def between_nodes(self, src: NodeState, dst: NodeState, dst_pod: PodRef) -> tuple[NodeTunnel, Sequence[WayPoint]]:
        """The tunnel between the nodes and its capture points, in the request's order; a
        ClusterError that says what is missing when the state does not add up."""

    def title(self, src_end: PodEnd) -> str:
        """The way in words, as `tracer path` names it (the pod's end can tell, e.g. a bridge)."""

    def bypass(self, src: NodeState, dst_pod: PodRef) -> str:
        """Why this way may carry packets past the pods' host veths unseen (an eBPF redirect into
        the pod), "" when every packet passes them: those points are marked, and a packet not seen
        there is not visible there, not lost."""


def data_paths() -> tuple[DataPath, ...]:
    return tuple(cast(DataPath, importlib.import_module(name)) for name in DATA_PATHS)


def discover(backend: Backend, src: str, dst: str, points: Sequence[str] = (),
             states: dict[str, NodeState] | None = None) -> Way:
    """Read the live state of both pods and nodes and return the request's expected way.

    `points` (`NODE/IFACE`, follow's --point): interfaces to capture on as well, put on the way
    by their node (after the source node's points, before the destination node's); on a way no
    data path knows they are its middle, between the pods' ends, which every CNI shares.
    `states` (node -> NodeState): the nodes' state as read for other ways of the same request
    (a Service's other endpoints, the DNS query's), used and filled here: each node read once.

    The reads are fetched ahead, those that do not depend on each other at once (each one is a
    process on the lab, an exec round trip on Kubernetes), in two rounds: what the pods' names
    tell, then the veths' sysctls and what the data path's tables name in the first round.
    The way is then built from those caches in order, as if read one by one: a read that failed
    ahead is done again there, so errors come as they always did.
    """
    src_pod, dst_pod = backend.pod(src), backend.pod(dst)
    states = {} if states is None else states
    src_node = states.setdefault(src_pod.node, NodeState(backend, src_pod.node))
    dst_node = states.setdefault(dst_pod.node, NodeState(backend, dst_pod.node))
    src_reads, dst_reads = PodReads(backend, src_pod, dst_pod.ip), PodReads(backend, dst_pod, src_pod.ip)
    _prefetch(src_reads, dst_reads, src_node, dst_node, dst_pod)
    src_end = pod_end(src_reads, src_node)
    dst_end = pod_end(dst_reads, dst_node)
    warnings = [*end_warnings(src_end, src_node), *end_warnings(dst_end, dst_node)]
    warnings += [f"pod {r.pod.name} cannot be read inside (no `cat`: a distroless image?): its end is what "
                 f"{r.pod.node} knows of it (its host veth by the node's route, its MAC by the node's neighbour "
                 "entry); its own route and ARP table are not known" for r in (src_reads, dst_reads) if r.from_node]

    nodes = {src_node.name: src_node, dst_node.name: dst_node}
    asked = [_asked_point(nodes, backend, spec, src_pod.node) for spec in points]
    if dst_pod.node == src_pod.node:
        return Way(src=src_end, dst=dst_end, tunnel=None,
                   points=_with_asked(_same_node_points(src_end, dst_end, src_node), asked, src_pod.node, dst_pod.node),
                   warnings=tuple(warnings))
    first = end_points(src_end, src_node, "ingress")
    last = end_points(dst_end, dst_node, "egress")
    try:
        path = _data_path_of(src_node, dst_pod)
    except ClusterError as e:
        if not asked:
            raise
        # (captured anyway, as asked: the ends are every CNI's, the middle is the named points)
        return Way(src=src_end, dst=dst_end, tunnel=_unknown_tunnel(src_node, dst_node, dst_pod),
                   points=_with_asked((*first, *last), asked, src_pod.node, dst_pod.node),
                   warnings=(*warnings, f"{e.message}: capturing on {', '.join(p.id for p in asked)} as "
                                        "--point asked, every frame there"),
                   data_path="unknown")
    # (a known way whose tables do not add up is an error to see, --point or not)
    tunnel, between = path.between_nodes(src_node, dst_node, dst_pod)
    title = path.title(src_end)
    blind = path.bypass(src_node, dst_pod)
    if blind:
        first, last = ([replace(p, bypass=blind) if p.role == "pod-veth" else p for p in ps] for ps in (first, last))
    warnings += _mtu_warnings(src_end, tunnel, src_node)
    return Way(src=src_end, dst=dst_end, tunnel=tunnel,
               points=_with_asked((*first, *between, *last), asked, src_pod.node, dst_pod.node),
               warnings=tuple(warnings), data_path=title)


OVERHEAD = {"vxlan": 50, "geneve": 50, "ipip": 20}
"""Bytes each encapsulation adds to the inner packet over IPv4 (outer IP, UDP, its header, the
inner Ethernet header: DATAPATHS.md §1, §2, §6); Geneve's options come on top."""


def _mtu_warnings(src: PodEnd, tunnel: NodeTunnel | None, node: NodeState) -> list[str]:
    """A pod MTU that does not leave room for the encapsulation on the underlay NIC: full-size
    packets cannot cross whole (ICMP "fragmentation needed" and path-MTU discovery for TCP,
    fragments of the outer packet where DF is not set)."""
    extra = OVERHEAD.get(tunnel.encapsulation) if tunnel is not None else None
    if not extra or not src.mtu:
        return []
    nic = next((l for l in node.links if l.get("ifname") == tunnel.underlay_src), None)
    if nic is None or not nic.get("mtu") or src.mtu + extra <= nic["mtu"]:
        return []
    return [f"{src.pod.name}'s MTU {src.mtu} + {tunnel.encapsulation.upper() if tunnel.encapsulation != 'geneve' else 'Geneve'}'s "
            f"{extra} bytes = {src.mtu + extra} > {tunnel.underlay_src}'s MTU {nic['mtu']} on {node.name}: a full-size "
            f"packet cannot cross whole; TCP learns it from an ICMP \"fragmentation needed\" (path-MTU discovery) or the "
            f"outer packet is fragmented on {tunnel.underlay_src}; the CNI's MTU should be {nic['mtu'] - extra}"]


_KIND_ROLES = {"vxlan": "tunnel", "geneve": "tunnel", "ipip": "tunnel", "gre": "tunnel", "gretap": "tunnel",
               "ip6tnl": "tunnel", "sit": "tunnel", "wireguard": "tunnel", "bridge": "bridge", "veth": "pod-veth"}
"""An asked point's role, from its interface's kind (`ip -d link`'s info_kind); a NIC, a bond,
a VLAN or anything else is the underlay."""


def _asked_point(nodes: dict[str, NodeState], backend: Backend, spec: str, src_node: str) -> WayPoint:
    """The capture point `NODE/IFACE` names, read from that node's state."""
    node_name, sep, iface = spec.partition("/")
    if not sep or not node_name or not iface or "/" in iface:
        raise UsageError(f"--point {spec}: not NODE/IFACE", hint="e.g. --point worker1/eth1 (tracer path lists a way's points)")
    node = nodes.get(node_name) or nodes.setdefault(node_name, NodeState(backend, node_name))
    link = next((l for l in node.links if l["ifname"] == iface), None)
    if link is None:
        names = ", ".join(l["ifname"] for l in node.links)
        raise NotFoundError(f"--point {spec}: node {node_name} has no interface {iface}", hint=f"it has {names}")
    kind = link.get("linkinfo", {}).get("info_kind", "")
    role = _KIND_ROLES.get(kind, "underlay")
    point = capture_point(node, link, role, "egress" if node_name == src_node else "ingress", ("", ""),
                          f"Named with --point: captured as asked ({kind or 'a NIC'}, so {role}); tracer did not "
                          "read this interface's part in the way.")
    return replace(point, asked=True)


def _with_asked(points: Sequence[WayPoint], asked: Sequence[WayPoint], src_node: str, dst_node: str) -> tuple[WayPoint, ...]:
    """The way's points with the asked ones not on it yet: the source node's after that node's
    points, the destination node's before its points, any other node's between the two."""
    known = {p.id for p in points}
    extra = [p for p in dict((p.id, p) for p in asked).values() if p.id not in known]
    src = [p for p in points if p.node == src_node]
    dst = [p for p in points if p.node != src_node]
    if src_node == dst_node:
        return (*src, *extra)
    middle = [p for p in extra if p.node == src_node] + [p for p in extra if p.node not in (src_node, dst_node)]
    k = next((i for i, p in enumerate(dst) if p.node == dst_node), len(dst))
    return (*src, *middle, *dst[:k], *(p for p in extra if p.node == dst_node), *dst[k:])


def _unknown_tunnel(src: NodeState, dst: NodeState, dst_pod: PodRef) -> NodeTunnel:
    """The hop between the nodes as far as the source node's route tells, on a way tracer does not know."""
    dev = src.device_toward(dst_pod.ip)
    return NodeTunnel(device=dev["ifname"], vni=None, udp_port=None, mtu=dev.get("mtu", 0), src_mac=dev.get("address", ""),
                      dst_mac="", dst_tunnel_ip=src.route_get(dst_pod.ip).get("gateway", ""), src_node_ip="",
                      dst_node_ip="", route=src.route_for(dst_pod.ip), underlay_src="", underlay_src_mac="",
                      underlay_dst="", underlay_dst_mac="", encapsulation="unknown")


def _same_node_points(src: PodEnd, dst: PodEnd, node: NodeState) -> tuple[WayPoint, ...]:
    """Both pods on one node: routed by the node between their veths (TTL-1), or, on one bridge
    whose subnet both share, switched from port to port (the frame unchanged, pod MAC to pod MAC)."""
    if src.bridge is not None and src.bridge == dst.bridge:
        a = end_points(src, node, "ingress", routed=False)[0]
        b = end_points(dst, node, "egress", routed=False)[0]
        return (replace(a, eth_dst=dst.mac), replace(b, eth_src=src.mac))
    return (*end_points(src, node, "ingress"), *end_points(dst, node, "egress"))


def _prefetch(src: PodReads, dst: PodReads, src_node: NodeState, dst_node: NodeState, dst_pod: PodRef) -> None:
    """Fill the caches discovery reads from, in two rounds of reads at once (see `discover`)."""
    same_node = src_node is dst_node
    nodes = (src_node,) if same_node else (src_node, dst_node)
    paths = () if same_node else data_paths()
    read_at_once(
        src.files, src.route, dst.files, dst.route,
        *(lambda n=n: n.links for n in nodes), *(lambda n=n: n.routes for n in nodes),
        *(() if same_node else (lambda: src_node.route_get(dst_pod.ip),)),
        *(read for path in paths for read in path.reads_ahead(src_node, dst_pod)),
    )
    second = []
    for reads, node in ((src, src_node), (dst, dst_node)):
        try:
            veth = node.link(ifindex=reads.parse()["iflink"])["ifname"]
        except Exception:  # noqa: BLE001 - read again, and reported, in order
            continue
        second.append(lambda node=node, veth=veth: node.veth_sysctls(veth))
    for path in paths:
        try:
            if path.recognizes(src_node, dst_pod):
                second.extend(path.reads_after(src_node, dst_pod))
                break
        except Exception:  # noqa: BLE001 - read again, and reported, in order
            continue
    read_at_once(*second)


def _data_path_of(src: NodeState, dst_pod: PodRef) -> DataPath:
    """The data path whose way the source node's state toward dst_pod is; else why there is none."""
    paths = data_paths()
    for path in paths:
        if path.recognizes(src, dst_pod):
            return path
    device = src.device_toward(dst_pod.ip)
    kind = device.get("linkinfo", {}).get("info_kind")
    raise ClusterError(
        f"node {src.name} sends {dst_pod.ip} as `{src.route_for(dst_pod.ip)}`, out of {device['ifname']} "
        f"({kind or 'no tunnel'}): not a way tracer knows",
        hint=f"tracer knows {', '.join(f'{p.NAME} ({p.DEVICE})' for p in paths)}; to capture anyway, name the "
             "interfaces: tracer follow SRC DST --point NODE/IFACE ...",
    )
