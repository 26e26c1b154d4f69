"""IPv4 fragments of a frame's outermost packet, put back together before it is decoded.

A tunnel packet larger than the underlay's MTU leaves the node in fragments when its outer DF
bit is clear (the kernel's VXLAN default, `df unset`: DATAPATHS.md §0): the first fragment
holds the outer UDP and VXLAN headers and the inner packet's beginning, the others the rest.
Decoded one by one, neither is the inner packet the other points show. Held per capture file
until every piece is in (offsets contiguous from 0, the last without "more fragments"), they
become one frame, decoded as any other, with the time of the first piece (when the packet
began to pass) and the pieces' lengths (Frame.fragments: the hop then says it was
fragmented). Fragments of an inner packet (a node fragmenting what it routes into the tunnel)
are not touched: every point after that node sees the same fragments, matched by IP ID and
offset (tracer.capture.sightings.identity).

A set not complete within MAX_AGE seconds of capture time, or when the file ends, is given
back piece by piece, as it was captured.
"""

from __future__ import annotations

import struct

from tracer.decode import LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW

MF, OFFSET = 0x2000, 0x1FFF
MAX_AGE = 2.0
"""Seconds of capture time a fragment waits for the rest of its packet."""
MAX_PENDING = 1024
"""Packets whose fragments are held at once, per file (the oldest given back beyond)."""
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)


def outer_ip(linktype: int, data: bytes) -> int:
    """Where the frame's outermost IPv4 header begins, or -1 (another protocol, a link type
    this does not know)."""
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        while len(data) >= off + 2:
            et = data[off] << 8 | data[off + 1]
            if et in _VLAN_TYPES:
                off += 4
                continue
            return off + 2 if et == 0x0800 else -1
        return -1
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return 0 if data and data[0] >> 4 == 4 else -1
    if linktype == LINKTYPE_LINUX_SLL:
        return 16 if data[14:16] == b"\x08\x00" else -1
    if linktype == LINKTYPE_LINUX_SLL2:
        return 20 if data[0:2] == b"\x08\x00" else -1
    if linktype == LINKTYPE_NULL:
        return 4 if len(data) >= 4 and 2 in (data[0], data[3]) else -1
    return -1


TUNNEL_PROTOCOLS = (4, 17, 47)
"""IP-in-IP, UDP (VXLAN, Geneve: told by the first fragment's port), GRE: what may carry a tunnel."""


class Defrag:
    """One capture file's fragments on the way to whole packets (only a tunnel's: see put_together)."""

    __slots__ = ("pending", "tunnel_ports")

    def __init__(self, tunnel_ports: frozenset[int] = frozenset((4789, 8472, 6081))):
        self.pending: dict[tuple, list] = {}
        """(link-level key, source, destination, protocol, IP ID) -> [first time, pieces]; a
        piece is (offset in bytes, more fragments?, time, data, original length, IP header offset)."""
        self.tunnel_ports = tunnel_ports
        """UDP ports of the tunnels (VXLAN, Geneve) whose fragments are put together."""

    def feed(self, linktype: int, data: bytes, orig_len: int, ts: float, tag: int = 0) -> list[tuple]:
        """What to decode now, each (data, original length, time, fragment lengths or None, tag):
        the frame itself, nothing (a fragment held), or a whole packet (and what aged out).
        `tag`: the file's interface the frame came from (fragments of one are put together)."""
        out = self._aged(ts) if self.pending else []
        off = outer_ip(linktype, data)
        if off < 0 or len(data) < off + 20:
            out.append((data, orig_len, ts, None, tag))
            return out
        frag = data[off + 6] << 8 | data[off + 7]
        if not frag & (MF | OFFSET) or data[off] >> 4 != 4:
            out.append((data, orig_len, ts, None, tag))
            return out
        ihl = (data[off] & 0x0F) * 4
        total = data[off + 2] << 8 | data[off + 3]
        if ihl < 20 or total < ihl or len(data) < off + total or data[off + 9] not in TUNNEL_PROTOCOLS:
            # (cut short: cannot be put together; not a protocol that carries tunnels: a pod's own
            # fragments, which the points past a tunnel see as the same fragments inside it)
            out.append((data, orig_len, ts, None, tag))
            return out
        link = data[4:8] if linktype == LINKTYPE_LINUX_SLL2 else b""  # (tcpdump -i any: the interface)
        key = (tag, link, data[off + 12:off + 20], data[off + 9], data[off + 4:off + 6])
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= MAX_PENDING:
                out += self._give_back(next(iter(self.pending)))
            entry = self.pending[key] = [ts, []]
        pieces = entry[1]
        pieces.append(((frag & OFFSET) * 8, bool(frag & MF), ts, data, orig_len, off))
        whole = _whole(pieces)
        if whole is not None:
            if self._tunnel(whole[0], off):
                del self.pending[key]
                out.append((*whole, tag))
            else:  # (a UDP datagram of the pod's own: its fragments as they are, matched as such)
                out += self._give_back(key)
        return out

    def _tunnel(self, data: bytes, off: int) -> bool:
        """Whether a whole packet carries a tunnel: IP-in-IP, GRE, UDP to a tunnel's port."""
        proto = data[off + 9]
        if proto != 17:
            return True
        udp = off + (data[off] & 0x0F) * 4
        return len(data) >= udp + 4 and (data[udp + 2] << 8 | data[udp + 3]) in self.tunnel_ports

    def flush(self) -> list[tuple]:
        """Every fragment still held, given back as it was captured (the file ended)."""
        out = []
        for key in list(self.pending):
            out += self._give_back(key)
        return out

    def _aged(self, now: float) -> list[tuple]:
        """The sets held longer than MAX_AGE, given back: the oldest are first in `pending`
        (insertion order), so the scan stops at the first one still young."""
        out = []
        while self.pending:
            key = next(iter(self.pending))
            if now - self.pending[key][0] <= MAX_AGE:
                break
            out += self._give_back(key)
        return out

    def _give_back(self, key: tuple) -> list[tuple]:
        return [(d, n, t, None, key[0]) for _, _, t, d, n, _ in sorted(self.pending.pop(key)[1], key=lambda p: p[2])]


def _whole(pieces: list[tuple]) -> tuple | None:
    """The packet the pieces make, if they are all there: (data, length, time of the first
    piece, the pieces' lengths in order)."""
    pieces.sort(key=lambda p: p[0])
    if pieces[0][0] != 0 or pieces[-1][1]:
        return None
    payload = []
    end = 0
    for start, _, _, data, _, off in pieces:
        ihl = (data[off] & 0x0F) * 4
        total = data[off + 2] << 8 | data[off + 3]
        if start != end:
            return None  # (a hole, or pieces that overlap: not yet, or not at all)
        payload.append(data[off + ihl:off + total])
        end += total - ihl
    _, _, _, first, _, off = pieces[0]
    ihl = (first[off] & 0x0F) * 4
    if ihl + end > 65535:
        return None  # (more than an IPv4 packet holds: not one packet's pieces; given back when aged)
    header = bytearray(first[off:off + ihl])
    struct.pack_into("!H", header, 2, ihl + end)
    struct.pack_into("!H", header, 6, (header[6] << 8 | header[7]) & 0x4000)  # (DF as it was; no MF, no offset)
    data = first[:off] + bytes(header) + b"".join(payload)
    return data, len(data), min(p[2] for p in pieces), tuple(p[4] for p in pieces)
