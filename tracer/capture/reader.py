"""A set of captures, read: every input opened as a stream of sighting batches, and the capture
points they make up, with what their frames told about each (tracer.capture.sightings).

Which reader takes a file: in summary mode, pcap files of Ethernet frames and pcapng files of one
Ethernet interface go to the fast reader (tracer.capture.fastpath; big ones in processes of their
own, tracer.capture.workers); everything else, and every file when packets are kept, to the
general reader here, which decodes every frame in full (tracer.decode). A `tcpdump -i any`
capture becomes one point per interface.
"""

from __future__ import annotations

import itertools

import os
from collections.abc import Iterable, Iterator

from tracer.capture.fastpath import pcap_sightings
from tracer.capture.inputs import CaptureInput, total_size, whole_node
from tracer.capture.pcapio import open_capture, pcapng_head, resume_records
from tracer.capture.roles import AMBIGUOUS_NAME, infer_role, role_from_name
from tracer.capture.defrag import Defrag
from tracer.capture.sightings import PointStats, from_frame
from tracer.capture.workers import Workers
from tracer.decode import GENEVE_PORT, LINKTYPE_ETHERNET, decode
from tracer.errors import UsageError

BATCH = 1024  # sightings the general reader hands on at once
PCAP_HEADER = 24  # bytes of a pcap file's header: a file of just that holds no packet


class PointState:
    """One capture point while its captures are read: its files, statistics and role."""

    __slots__ = ("id", "node", "interface", "stats", "files", "role")

    def __init__(self, pid: str, node: str, interface: str):
        self.id, self.node, self.interface = pid, node, interface
        self.stats = PointStats()
        self.files: list[str] = []
        self.role = role_from_name(interface) or "unknown"  # refined from traffic at the end

    @property
    def frames(self) -> int:
        return self.stats.frames

    @property
    def undecoded(self) -> int:
        return self.stats.undecoded

    @property
    def ips(self) -> set[bytes]:
        """Inner IPs seen (to tell whose pod veth this is)."""
        return self.stats.ips


class CaptureSet:
    """The inputs of one analysis: `open()` opens them all (refusing what is not a capture before
    any work is done) and gives each one's batches of sightings; the points fill in as they are read."""

    def __init__(self, inputs: Iterable[CaptureInput], *, vxlan_ports: frozenset[int], keep_packets: bool,
                 fast: bool = True, ifnames: dict[tuple[str, int], str] | None = None, jobs: int | None = None):
        self.inputs = list(inputs)
        self.vxlan_ports = vxlan_ports
        self.keep_packets = keep_packets
        self.fast = fast
        self.ifnames = ifnames or {}
        self.points: list[PointState] = []
        self.point_index: dict[str, int] = {}
        self.warnings: list[str] = []
        self.unfollowed: list[tuple[int, float, object]] = []
        """With keep_packets: the frames that are no IP or ARP packet (point, time, Frame), for
        the merged pcapng, which writes every frame read."""
        self._caps: list = []  # (pcapio.CaptureFile of each input, once opened: their `read`)
        self._headers_only: list[str] = []  # inputs that are a pcap header and nothing else
        self._total = 1
        self._workers = Workers(jobs)

    def open(self) -> list[Iterator[list[tuple]]]:
        """Every input's stream of batches, in the order of the inputs."""
        streams = [self._open(inp) for inp in self.inputs]
        self._total = max(1, total_size(c.path for c in self._caps))
        return streams

    def share_read(self) -> float:
        """The share of the captures' bytes read so far."""
        return min(1.0, sum(c.read for c in self._caps) / self._total)

    def close(self) -> None:
        """End the worker processes, however reading ended."""
        self._workers.close()

    @property
    def frames(self) -> int:
        return sum(p.stats.frames for p in self.points)

    def note_mixed_directories(self) -> None:
        """Warn of points read from files of different directories (two runs taken as one?)."""
        mixed = [pt for pt in self.points if len({os.path.dirname(os.path.abspath(f)) for f in pt.files}) > 1]
        if mixed:
            self.warnings.append(
                f"{len(mixed)} point{'s are' if len(mixed) > 1 else ' is'} read from files in different directories "
                f"(as {mixed[0].id}: {', '.join(mixed[0].files)}): captures of different runs taken as one? "
                f"Analyze one capture set at a time, or name points apart with --point NAME=FILE")

    def settle_roles(self, pods: frozenset[str]) -> None:
        """Each point's role from what its frames told, once everything is read (until then, from
        its interface's name): the points of pods captured as `<pod>/<interface>` are pod veths."""
        per_node: dict[str, int] = {}
        for pt in self.points:
            per_node[pt.node] = per_node.get(pt.node, 0) + 1
        for pt in self.points:
            st = pt.stats
            pt.role = "pod-veth" if pt.node in pods else infer_role(
                pt.interface, encapsulated=st.encapsulated, frames=st.frames, calico_mac_seen=st.calico_mac)
            if pt.node not in pods and not st.frames and per_node[pt.node] == 1 and AMBIGUOUS_NAME.match(pt.interface):
                # A lone eth0 that saw nothing (as a pod's own capture a packet never reached): a
                # pod's eth0 or a node's NIC, nothing tells which (a node's has its other points).
                pt.role = "unknown"

    def note_empty_captures(self) -> None:
        """When every capture is a pcap header and nothing else, say why that happens: tcpdump
        ended before it wrote out its buffer. (One empty capture among others is a point nothing
        passed, as a follow's point past a drop: nothing to say about that.)"""
        if self._headers_only and len(self._headers_only) == len(self.inputs):
            files = ", ".join(self._headers_only[:3]) + (", ..." if len(self._headers_only) > 3 else "")
            self.warnings.append(
                f"no packets in the captures, only their pcap headers ({files}): tcpdump buffers what it captures; "
                f"with -U or --immediate-mode it writes each packet as it comes; stop it with Ctrl-C, not kill -9")

    def _point(self, node: str, interface: str, path: str) -> int:
        pid = f"{node}/{interface}"
        idx = self.point_index.get(pid)
        if idx is None:
            idx = len(self.points)
            self.points.append(PointState(pid, node, interface))
            self.point_index[pid] = idx
        if path not in self.points[idx].files:
            self.points[idx].files.append(path)
        return idx

    def _open(self, inp: CaptureInput) -> Iterator[list[tuple]]:
        """Open one input (refusing what is not a capture) and return its batches of sightings."""
        cap, records = open_capture(inp.path)
        self._caps.append(cap)
        if cap.format == "pcap" and total_size([inp.path]) == PCAP_HEADER:
            self._headers_only.append(inp.path)
        if not self.keep_packets and self.fast and (
                cap.format == "pcap" and cap.interfaces and cap.interfaces[0].linktype == LINKTYPE_ETHERNET
                or cap.format == "pcapng" and pcapng_head(cap)):
            # (its point now, read here or not: a worker needs its index from the start; never
            # a whole node's, which only Linux cooked frames can be)
            pidx = self._iface_point(inp, cap, 0, False)
            assert pidx is not None
            records.close()
            stats, vx = self.points[pidx].stats, self.vxlan_ports

            def warn(w: str) -> None:
                self.warnings.append(f"{inp.path}: {w}")

            batches = self._workers.read(cap, pidx, stats, vx, warn) if self._workers.wants(inp.path) else None
            if batches is None:
                batches = pcap_sightings(cap, pidx, stats, vx, warn)
            return self._read_on(inp, cap, batches, pidx) if cap.format == "pcapng" else batches
        return self._read(inp, cap, records)

    def _read_on(self, inp: CaptureInput, cap, batches: Iterator[list[tuple]], pidx: int) -> Iterator[list[tuple]]:
        """A pcapng file's fast batches, then what the general reader makes of the rest of it when
        the fast reader left some (cap.resume): another interface, a corrupt or cut-short block."""
        yield from batches
        if cap.resume is not None:
            yield from self._read(inp, cap, resume_records(cap), [pidx], cap.resume[0])

    def _iface_point(self, inp: CaptureInput, cap, i: int, multi: bool) -> int | None:
        """The point of a file's interface `i` (None: a whole node's capture, a point per frame's
        interface). `multi`: whether the file described more than one interface before its first
        packet."""
        iface = cap.interfaces[i]
        name = iface.name or ""
        if inp.split_node is not None and name in ("", "any") and whole_node(inp.path, i, iface):
            return None
        if inp.forced and inp.split_node is not None and inp.node == "-":
            # (--point NAME=FILE with NAME a node: only a whole node's capture can be that)
            raise UsageError(f"--point {inp.interface}={inp.path}: a point is NODE/INTERFACE; NODE alone names a "
                             "`tcpdump -i any` capture of every interface of a node, and this file is not one",
                             f"e.g. --point worker1/{inp.interface}={inp.path}")
        if inp.forced or not name:
            return self._point(inp.node, inp.interface, inp.path)
        if "/" in name:
            node, _, ifname = name.partition("/")
            return self._point(node, ifname, inp.path)
        return self._point(inp.node, name if multi else inp.interface, inp.path)

    def _read(self, inp: CaptureInput, cap, records, by_iface: list[int] | None = None,
              taken: int = 24) -> Iterator[list[tuple]]:
        """The general reader's batches (every frame decoded). `by_iface`, `taken`: the points of
        the interfaces and the bytes read by a reader that began the file (see _read_on)."""
        vxlan_ports = self.vxlan_ports
        keep = self.keep_packets
        multi = None if by_iface is None else False
        by_iface = [] if by_iface is None else by_iface
        split: dict[int, dict[int, int]] = {}  # file interface -> {interface index -> point} (tcpdump -i any)
        batch: list[tuple] = []
        overhead = 16 if cap.format == "pcap" else 32  # (record headers: for progress)
        defrag = Defrag(self.vxlan_ports | {GENEVE_PORT})

        def sight(i: int, linktype: int, data: bytes, orig: int, t: float, pieces: tuple | None) -> None:
            """Decode one frame (or packet put together) of interface i into the batch."""
            fr = decode(linktype, data, orig, vxlan_ports)
            if pieces:
                fr.fragments = pieces
            pidx = by_iface[i]
            if pidx < 0:  # a whole node's capture: the frame's own interface is the point
                ifindex = fr.ifindex or 0  # (0: a header cut short)
                pidx = split[i].get(ifindex)
                if pidx is None:
                    pidx = split[i][ifindex] = self._point(inp.split_node, self._ifname(inp, ifindex), inp.path)
            stats = self.points[pidx].stats
            e = stats.add_frame(fr, t)
            if pieces:
                stats.frames += len(pieces) - 1  # (add_frame counted the packet once)
            if e is None:
                if keep:
                    self.unfollowed.append((pidx, t, fr))
            else:
                batch.append(from_frame(t, pidx, fr, e, keep))

        try:
            for rec in itertools.chain(records, [None]):
                if rec is None:  # (the end: the fragments still held, as they were captured)
                    for data, orig, t, _, i in defrag.flush():
                        sight(i, cap.interfaces[i].linktype, data, orig, t, None)
                    break
                i = rec.interface
                if i >= len(by_iface):
                    if multi is None:
                        multi = len(cap.interfaces) > 1
                    while len(by_iface) <= i:
                        pidx = self._iface_point(inp, cap, len(by_iface), multi)
                        if pidx is None:
                            split[len(by_iface)] = {}
                        by_iface.append(-1 if pidx is None else pidx)
                taken += len(rec.data) + overhead
                linktype = cap.interfaces[i].linktype
                for data, orig, t, pieces, tag in defrag.feed(linktype, rec.data, rec.orig_len, rec.time, i):
                    sight(tag, linktype if tag == i else cap.interfaces[tag].linktype, data, orig, t, pieces)
                if len(batch) >= BATCH:
                    cap.read = max(cap.read, taken)  # (a fast reader before may have read ahead)
                    yield batch
                    batch = []
            cap.read = max(cap.read, taken)
            if batch:
                yield batch
        finally:
            for w in cap.warnings:
                self.warnings.append(f"{inp.path}: {w}")
        unnamed = sorted(k for d in split.values() for k in d if (inp.split_node, k) not in self.ifnames)
        if unnamed:
            self.warnings.append(
                f"{inp.path}: a capture of every interface of {inp.split_node} (tcpdump -i any), one point per "
                f"interface; interface index {', '.join(map(str, unnamed))} named if<index>: give their names with "
                f"--path-file (tracer path SRC DST --output json) or --ifname {inp.split_node}/{unnamed[0]}=NAME "
                f"(`ip -o link` on the node lists them)")
        if not by_iface:
            # A capture that saw nothing is still a point of the way: it tells where packets did not go.
            named = [i.name for i in cap.interfaces if i.name and "/" in i.name and not inp.forced]
            for name in named:
                node, _, ifname = name.partition("/")
                self._point(node, ifname, inp.path)
            if not named:
                self._point(inp.node, inp.interface, inp.path)

    def _ifname(self, inp: CaptureInput, ifindex: int) -> str:
        return self.ifnames.get((inp.split_node, ifindex)) or f"if{ifindex}"


