"""The fast reader: sightings straight from the bytes of a pcap file of Ethernet frames (or a
pcapng file of one Ethernet interface), without building a Frame, for the shapes a Kubernetes
capture is mostly made of (Ethernet / IPv4 / TCP, and the same inside VXLAN); every other frame
goes to the full decoder. Both give equal sightings for the same bytes (tests/test_fastpath.py).
This is what makes `tracer analyze --summary` fast.

Hand-inlined on purpose: the layout of a sighting (tracer.capture.sightings), the TCP identity
and PointStats' first-frame bookkeeping are written out in the loop again, as are the VXLAN
port rule of tracer.decode and pcapio's warning texts; a call per frame would cost a tenth of
the reader. tests/test_fastpath.py holds each copy to the original.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from operator import itemgetter

from tracer.capture.defrag import Defrag
from tracer.capture.sightings import T, PointStats, from_frame, tcp_key
from tracer.decode import GENEVE_PORT, LINKTYPE_ETHERNET, decode
from tracer.capture.pcapio import MAX_RECORD, PCAPNG_SHB, CaptureFile

CHUNK = 1 << 20

# The two shapes nearly every frame of a Kubernetes capture has, each read with one unpack:
# Ethernet / IPv4 (no options) / TCP: ethertype; version+IHL, length, id, fragment, TTL (the protocol byte
# is checked before); TCP seq, ack, data offset, flags (the ports are read as bytes, with the addresses).
_ETH_IP_TCP = struct.Struct("!12xH" "BxHHHB11x" "4xIIBB")
# Ethernet / IPv4 / UDP / VXLAN / Ethernet / IPv4 / TCP: the outer ethertype, version+IHL, fragment, UDP
# ports, the VXLAN flags; then the inner ethertype and the inner IPv4 and TCP fields as above, with the
# inner protocol.
_VXLAN_TCP = struct.Struct("!12xH" "Bx4xH12x" "HH4x" "B7x" "12xH" "BxHHHBB10x" "4xIIBB")


_time = itemgetter(T)


def _span(stats: PointStats, batch: list[tuple]) -> None:
    """The batch's earliest and latest times into the point's first and last (frames that are
    not IP went through add_frame, which did the same), whatever order the file is in."""
    if batch:
        times = list(map(_time, batch))
        stats.widen(min(times), max(times))


def pcap_sightings(cap: CaptureFile, point: int, stats: PointStats, vxlan_ports: frozenset[int],
                   warn: Callable[[str], None]) -> Iterator[list[tuple]]:
    """Batches of sightings of a pcap (or one-interface pcapng) file of Ethernet frames (see
    _sightings), then those of the fragments still held when it ends, as they were captured."""
    defrag = Defrag(vxlan_ports | {GENEVE_PORT})
    yield from _sightings(cap, point, stats, vxlan_ports, warn, defrag)
    batch = []
    for data, orig, ts, _, _ in defrag.flush():
        fr = decode(LINKTYPE_ETHERNET, data, orig, vxlan_ports)
        e = stats.add_frame(fr, ts)
        if e is not None:
            batch.append(from_frame(ts, point, fr, e, False))
    if batch:
        _span(stats, batch)
        yield batch


def _sightings(cap: CaptureFile, point: int, stats: PointStats, vxlan_ports: frozenset[int],
               warn: Callable[[str], None], defrag: Defrag) -> Iterator[list[tuple]]:
    """Batches of sightings (one per MiB read), in file order, of a classic pcap file of Ethernet
    frames, or of a pcapng file of one Ethernet interface.

    `cap` is the file as pcapio.open_capture opened it (which refuses what is not a capture and
    read the header; for pcapng, pcapio.pcapng_head found the section, the interface and the
    first packet block, `cap.start`). Reading problems of a pcap file become warnings worded as
    pcapio words them, given to `warn` when the file is done. In a pcapng file, whatever is not an
    enhanced packet block of that interface or a block without packets (another section or
    interface, other packet blocks, a corrupt or cut-short block) ends this reader: `cap.resume`
    says where, for pcapio.resume_records to read on from there. `cap.read` follows how far it
    has read.
    """
    ng = cap.format == "pcapng"
    assert (ng or cap.format == "pcap") and cap.interfaces and cap.interfaces[0].linktype == LINKTYPE_ETHERNET
    div, units, off = cap.interfaces[0].ts_div, cap.interfaces[0].ts_units, cap.interfaces[0].ts_offset
    with open(cap.path, "rb") as f:
        f.seek(cap.start)
        unpack_rec = struct.Struct(cap.byte_order + "IIII").unpack_from
        # pcapng: block type, length; enhanced packet block: interface, timestamp, lengths
        unpack_epb, unpack_block = struct.Struct(cap.byte_order + "7I").unpack_from, struct.Struct(cap.byte_order + "II").unpack_from
        cap.read = base = cap.start  # (base: the offset in the file of the buffer's first byte)
        least = 12 if ng else 16  # (the smallest block, record header)
        eth_ip_tcp, vxlan_tcp, key = _ETH_IP_TCP.unpack_from, _VXLAN_TCP.unpack_from, tcp_key
        feed = defrag.feed
        vx = vxlan_ports
        rest = b""
        count = 0
        slow = encap = 0
        said: list[str] = []
        tunneled = point | 1 << 24
        bit = 1 << point
        seen = stats.ends
        try:
            while True:
                chunk = f.read(CHUNK)
                cap.read += len(chunk)
                if not chunk:
                    if ng:
                        if rest:  # (what is not a whole block: pcapio says how it ends)
                            cap.resume = (base, count)
                        return
                    if len(rest) >= 16:
                        incl = unpack_rec(rest, 0)[2]
                        said.append(f"file cut short in packet {count + 1} ({len(rest) - 16} of {incl} bytes)")
                    elif rest:
                        said.append(f"file cut short in a record header after {count} packets")
                    return
                buf = rest + chunk if rest else chunk
                n = len(buf)
                huge = n > MAX_RECORD  # (only then can a corrupt length still fit in the buffer)
                pos = 0
                batch: list[tuple] = []
                append = batch.append
                dropped = 0  # records of this chunk not in the batch (not IP)
                stop = False  # (pcapng: a block for pcapio)
                while pos + least <= n:
                    if ng:
                        if pos + 28 <= n:
                            btype, blen, ifid, hi, lo, incl, orig = unpack_epb(buf, pos)
                        else:
                            btype, blen = unpack_block(buf, pos)
                            if btype == 6:
                                break  # (the rest of its header is in the next chunk)
                            ifid = -1
                        if btype != 6 or ifid or blen < 32 or blen & 3 or incl > blen - 32 or blen > MAX_RECORD:
                            if btype in (PCAPNG_SHB, 1, 2, 3, 6) or blen < 12 or blen & 3 or blen > MAX_RECORD:
                                stop = True
                                break
                            if pos + blen > n:
                                break
                            pos += blen  # statistics, names, custom blocks: no packets
                            continue
                        if pos + blen > n:
                            break
                        d = pos + 28
                        end = d + incl
                        pos += blen
                        sec, frac = divmod(hi << 32 | lo, units)
                        ts = sec + frac / div + off  # (as pcapio's _ng_time)
                    else:
                        sec, frac, incl, orig = unpack_rec(buf, pos)
                        d = pos + 16
                        end = d + incl
                        if end > n or huge and incl > MAX_RECORD:
                            if incl > MAX_RECORD:
                                count += len(batch) + dropped
                                _span(stats, batch)
                                said.append(f"corrupt record after {count} packets (length {incl}); stopped reading there")
                                if batch:
                                    yield batch
                                return
                            break
                        pos = end
                        ts = sec + frac / div
                    # Ethernet / IPv4 without options / TCP, not a fragment: (addresses, ports) at 26:38.
                    if incl >= 48 and buf[d + 23] == 6:
                        et, vihl, total, ipid, frag, ttl, seq, ack, doff, flags = eth_ip_tcp(buf, d)
                        if et == 0x0800 and vihl == 0x45 and total and not frag & 0x3FFF:
                            po = d + 34 + ((doff >> 2) & 60)
                            if po <= end:
                                plen = total + d + 14 - po
                                if plen < 0:
                                    plen = 0
                                e = buf[d + 26:d + 38]
                                if e not in seen:
                                    seen.add(e)
                                    stats.saw(e[:4], e[4:8], buf[d:d + 6], buf[d + 6:d + 12])
                                append((ts, point, key(ipid, seq, ack, flags, plen), ttl, point | ttl << 16, e, 6, flags,
                                        (buf[po:po + 8] if po + 8 <= end else buf[po:end]) if plen else b"", None, bit))
                                continue
                    # The same inside VXLAN (UDP to a VXLAN port, I flag): the inner packet's at 76:88.
                    # (The tail repeats the one above on purpose: a call per frame would cost a tenth.)
                    elif incl >= 98 and buf[d + 23] == 17:
                        (et, vihl, frag, usport, udport, vxflags, iet, ivihl, total,
                         ipid, ifrag, ttl, proto, seq, ack, doff, flags) = vxlan_tcp(buf, d)
                        if (et == 0x0800 and vihl == 0x45 and not frag & 0x3FFF and iet == 0x0800 and ivihl == 0x45
                                and proto == 6 and total and not ifrag & 0x3FFF and vxflags & 0x08
                                and (udport in vx or (usport in vx and udport != GENEVE_PORT))):
                            po = d + 84 + ((doff >> 2) & 60)
                            if po <= end:
                                plen = total + d + 64 - po
                                if plen < 0:
                                    plen = 0
                                e = buf[d + 76:d + 88]
                                if e not in seen:
                                    seen.add(e)
                                    stats.saw(e[:4], e[4:8], buf[d + 50:d + 56], buf[d + 56:d + 62])
                                encap += 1
                                append((ts, point, key(ipid, seq, ack, flags, plen), ttl, tunneled | ttl << 16, e, 6, flags,
                                        (buf[po:po + 8] if po + 8 <= end else buf[po:end]) if plen else b"", None, bit))
                                continue
                    # Anything else: the full decoder (an outer packet's fragments put together first).
                    slow += 1
                    dropped += 1  # (this record; less each sighting it gives: count stays the records')
                    for data, orig, t, pieces, _ in feed(LINKTYPE_ETHERNET, buf[d:end], orig, ts):
                        fr = decode(LINKTYPE_ETHERNET, data, orig, vx)
                        e = stats.add_frame(fr, t)
                        if pieces:
                            fr.fragments = pieces
                            stats.frames += len(pieces) - 1  # (add_frame counted the packet once)
                        if e is not None:
                            append(from_frame(t, point, fr, e, False))
                            dropped -= 1  # (a sighting in the batch: counted there; not IP: counted, not followed)
                rest = buf[pos:]
                count += len(batch) + dropped
                _span(stats, batch)
                if stop:
                    cap.resume = (base + pos, count)
                if batch:
                    yield batch
                if stop:
                    return
                base += pos
        finally:
            stats.frames += count - slow  # the fast ones (add_frame counted the others)
            stats.encapsulated += encap
            for w in said:  # at the end, as the general reader gives a file's warnings
                warn(w)
