"""Streaming readers for pcap and pcapng, in plain Python.

Both formats, both byte orders, micro- and nanosecond pcap, pcapng with several interfaces,
several sections, simple packet blocks, obsolete packet blocks, comments and if_tsresol /
if_tsoffset. Files are read in chunks, never whole, so memory does not grow with their size.

A reader yields `Record`s: (timestamp in seconds, interface index, frame bytes, original length).
Interface descriptions (link type, name, snap length) are in `reader.interfaces`, which grows
while a pcapng file is read (an interface is always described before its first packet).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from tracer.errors import CaptureFileError

from tracer.decode import LINKTYPE_ETHERNET  # (link types are the decoder's: decode imports no capture)

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

# A record larger than this is not a capture of a frame but a corrupt length field
# (BIG TCP / GSO super-frames reach 64 KiB-256 KiB; leave a wide margin).
MAX_RECORD = 16 * 1024 * 1024
CHUNK = 1 << 20


class Record(NamedTuple):
    time: float
    interface: int
    data: bytes
    orig_len: int


@dataclass(kw_only=True)
class Interface:
    """One capture interface of a file (pcap files have exactly one)."""

    linktype: int
    """Link-layer header type of every frame on this interface."""
    name: str | None = None
    """pcapng if_name, if the file gives one."""
    snaplen: int = 0
    """Bytes captured at most per frame (0: unlimited)."""
    ts_units: int = 1_000_000
    """Timestamp units per second (pcapng: a timestamp is split into seconds and units with it)."""
    ts_offset: int = 0
    """Seconds to add to every timestamp (pcapng if_tsoffset)."""

    @property
    def ts_div(self) -> float:
        """ts_units as a float: what a timestamp's fraction is divided by."""
        return float(self.ts_units)


@dataclass(kw_only=True)
class CaptureFile:
    """An open capture file: its format, its interfaces and what went wrong while reading."""

    path: str
    format: str
    interfaces: list[Interface] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    """Section and packet comments (packet comments only if `keep_comments`)."""
    byte_order: str = "<"
    """The byte order of the headers ("<" little, ">" big endian); pcapng: of the first section
    (known once `pcapng_head` has read it)."""
    read: int = 0
    """About how many bytes of the file its reader has taken in so far (for progress)."""
    start: int = 24
    """Where the first record is (pcapng: the first packet block, once `pcapng_head` found it)."""
    resume: tuple[int, int] | None = None
    """Set by a fast reader (tracer.capture.fastpath) that met what it leaves to this module's reader: the
    offset of that block and how many packets came before it (see `resume_records`)."""


def open_capture(path: str | os.PathLike) -> tuple[CaptureFile, Iterable[Record]]:
    """Open a pcap or pcapng file; return its description and an iterator of its records.

    Raises CaptureFileError with a hint when the file is not a capture at all. A file cut short
    in the middle of a record yields every complete record and adds a warning instead.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CaptureFileError(f"{path}: no such file", "check the path; a directory is read as <node>/<interface>.pcap") from None
    except IsADirectoryError:
        raise CaptureFileError(f"{path}: is a directory", "pass the directory itself to 'tracer analyze', not as --point") from None
    except OSError as e:
        raise CaptureFileError(f"{path}: cannot open: {e.strerror}", "check the file's permissions") from None
    head = f.read(24)
    if len(head) < 4:
        f.close()
        raise CaptureFileError(f"{path}: empty or too short to be a capture ({len(head)} bytes)",
                               "a pcap file starts with a 24-byte header; was the capture stopped before it was written?")
    magic_le = struct.unpack_from("<I", head)[0]
    if magic_le == PCAPNG_SHB:
        cap = CaptureFile(path=path, format="pcapng")
        return cap, _Records(f, _pcapng_records(f, head, cap))
    for endian in "<>":
        magic = struct.unpack_from(endian + "I", head)[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            cap = CaptureFile(path=path, format="pcap", byte_order=endian)
            if len(head) == 24:  # (else the reader warns and gives nothing)
                snaplen, network = struct.unpack_from(endian + "II", head, 16)
                # The upper bits of the link-type field may carry the FCS length (pcap spec).
                cap.interfaces.append(Interface(linktype=network & 0x03FFFFFF, snaplen=snaplen,
                                                ts_units=10**9 if magic == PCAP_MAGIC_NS else 10**6))
            return cap, _Records(f, _pcap_records(f, head, endian, cap))
    f.close()
    raise CaptureFileError(
        f"{path}: not a pcap or pcapng file (starts with {head[:4].hex()})",
        "save captures with 'tcpdump -w FILE' or Wireshark's pcap/pcapng formats; gzip'ed files must be unpacked first",
    )


class _Records:
    """A file's records (iterate over it), and `close()` to be done with the file, also when
    none was read."""

    def __init__(self, f: BinaryIO, records: Iterator[Record]):
        self._f, self._records = f, records

    def __iter__(self) -> Iterator[Record]:
        return self._records  # (the generator itself: nothing between it and the caller's loop)

    def close(self) -> None:
        self._records.close()
        self._f.close()


def _pcap_records(f: BinaryIO, head: bytes, endian: str, cap: CaptureFile) -> Iterator[Record]:
    """The records of a pcap file whose header open_capture has read into cap.interfaces[0]."""
    with f:
        if len(head) < 24:
            cap.warnings.append(f"file header cut short ({len(head)} of 24 bytes): no packets")
            cap.interfaces.append(Interface(linktype=LINKTYPE_ETHERNET))
            return
        rec_hdr = struct.Struct(endian + "IIII")
        unpack_hdr = rec_hdr.unpack_from
        div = cap.interfaces[0].ts_div
        buf = b""
        pos = 0
        count = 0
        while True:
            # Refill when the next record header or body is not complete in the buffer.
            if len(buf) - pos < 16:
                more = f.read(CHUNK)
                buf = buf[pos:] + more
                pos = 0
                if len(buf) < 16:
                    if buf:
                        cap.warnings.append(f"file cut short in a record header after {count} packets")
                    return
            sec, frac, incl, orig = unpack_hdr(buf, pos)
            if incl > MAX_RECORD:
                cap.warnings.append(f"corrupt record after {count} packets (length {incl}); stopped reading there")
                return
            end = pos + 16 + incl
            if end > len(buf):
                more = f.read(max(CHUNK, incl + 16))
                buf = buf[pos:] + more
                pos = 0
                end = 16 + incl
                if end > len(buf):
                    cap.warnings.append(f"file cut short in packet {count + 1} ({len(buf) - 16} of {incl} bytes)")
                    return
            count += 1
            yield Record(sec + frac / div, 0, buf[pos + 16:end], orig)
            pos = end


def _pcapng_records(f: BinaryIO, head: bytes, cap: CaptureFile, endian: str = "<", count: int = 0,
                    first: bool = True) -> Iterator[Record]:
    """Blocks are read one at a time; a block's length field bounds every read. (`endian`,
    `count`, `first`: where a reader that began elsewhere in the file left off.)"""
    with f:
        pending = head
        while True:
            hdr = pending[:8] if len(pending) >= 8 else pending + f.read(8 - len(pending))
            pending = pending[8:] if len(pending) >= 8 else b""
            if len(hdr) == 0:
                return
            if len(hdr) < 8:
                cap.warnings.append(f"file cut short in a block header after {count} packets")
                return
            btype = struct.unpack_from("<I", hdr)[0]
            if btype == PCAPNG_SHB:
                # The byte-order magic follows the block length; it decides the endianness of the section.
                bom = pending[:4] if len(pending) >= 4 else pending + f.read(4 - len(pending))
                pending = pending[4:] if len(pending) >= 4 else b""
                if len(bom) < 4:
                    cap.warnings.append("file cut short in a section header")
                    return
                if struct.unpack_from("<I", bom)[0] == PCAPNG_BOM:
                    endian = "<"
                elif struct.unpack_from(">I", bom)[0] == PCAPNG_BOM:
                    endian = ">"
                else:
                    if first:
                        raise CaptureFileError(f"{cap.path}: pcapng section header with a bad byte-order magic ({bom.hex()})",
                                               "the file is corrupt; try 'tshark -r FILE' to see how much of it can be read")
                    cap.warnings.append(f"corrupt section header after {count} packets; stopped reading there")
                    return
                blen = struct.unpack_from(endian + "I", hdr, 4)[0]
                body_len = blen - 8
                prefix = bom
            else:
                blen = struct.unpack_from(endian + "I", hdr, 4)[0]
                btype = struct.unpack_from(endian + "I", hdr)[0]
                body_len = blen - 8
                prefix = b""
            first = False
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                cap.warnings.append(f"corrupt block (type {btype:#x}, length {blen}) after {count} packets; stopped reading there")
                return
            need = body_len - len(prefix)
            body = pending[:need] if len(pending) >= need else pending + f.read(need - len(pending))
            pending = pending[need:] if len(pending) >= need else b""
            if len(body) < need:
                cap.warnings.append(f"file cut short in a block after {count} packets")
                return
            body = prefix + body  # the body without type/length header, with the trailing length
            content = body[:-4]
            if btype == PCAPNG_SHB:
                cap.interfaces.clear()  # interface ids are per section
                _collect_comments(content, 16, endian, cap.comments)
            elif btype == 1:  # Interface Description Block
                cap.interfaces.append(_parse_idb(content, endian))
            elif btype == 6:  # Enhanced Packet Block
                if len(content) < 20:
                    cap.warnings.append("short enhanced packet block skipped")
                    continue
                ifid, ts_hi, ts_lo, caplen, orig = struct.unpack_from(endian + "IIIII", content)
                if ifid >= len(cap.interfaces) or caplen > len(content) - 20:
                    cap.warnings.append(f"packet block for unknown interface {ifid} or bad length skipped")
                    continue
                iface = cap.interfaces[ifid]
                count += 1
                yield Record(_ng_time(ts_hi << 32 | ts_lo, iface), ifid, content[20:20 + caplen], orig)
            elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                if not cap.interfaces or len(content) < 4:
                    cap.warnings.append("simple packet block without an interface skipped")
                    continue
                orig = struct.unpack_from(endian + "I", content)[0]
                snap = cap.interfaces[0].snaplen or orig
                caplen = min(orig, snap, len(content) - 4)
                count += 1
                yield Record(0.0, 0, content[4:4 + caplen], orig)
            elif btype == 2:  # obsolete Packet Block
                if len(content) < 20:
                    continue
                ifid, _drops, ts_hi, ts_lo, caplen, orig = struct.unpack_from(endian + "HHIIII", content)
                if ifid >= len(cap.interfaces) or caplen > len(content) - 20:
                    cap.warnings.append("packet block for unknown interface skipped")
                    continue
                iface = cap.interfaces[ifid]
                count += 1
                yield Record(_ng_time(ts_hi << 32 | ts_lo, iface), ifid, content[20:20 + caplen], orig)
            # Name resolution, statistics, custom and unknown blocks carry no packets.


def _ng_time(ts: int, iface: Interface) -> float:
    """A pcapng timestamp in seconds: whole seconds plus the fraction, as a classic pcap's (more
    exact than ts / ts_div, and what tracer.capture.fastpath's fast reader computes too)."""
    sec, frac = divmod(ts, iface.ts_units)
    return sec + frac / iface.ts_div + iface.ts_offset


def pcapng_head(cap: CaptureFile) -> bool:
    """Whether a pcapng file starts as one section with one Ethernet interface (what a capture of
    one interface is) and its first packet block is a sound enhanced packet block of it. If so,
    its byte order, interface and section comments are in `cap` and `cap.start` is where that
    block is: tracer.capture.fastpath's fast reader begins there, and takes at least that packet (so that
    the points are those the general reader would make of the file). Anything else at the
    start (several interfaces, another link type or packet block, no packet in the first 64 KiB)
    is for the general reader (`open_capture`)."""
    with open(cap.path, "rb") as f:
        data = f.read(1 << 16)
    if len(data) < 12 or struct.unpack_from("<I", data)[0] != PCAPNG_SHB:
        return False
    endian = next((e for e in "<>" if struct.unpack_from(e + "I", data, 8)[0] == PCAPNG_BOM), None)
    if endian is None:
        return False
    pos, ifaces, comments = 0, [], []
    while True:
        if pos + 12 > len(data):
            return False
        btype, blen = struct.unpack_from(endian + "II", data, pos)
        if btype in (2, 3, 6):  # the first packet block (only its header need be here)
            if btype != 6 or blen < 32 or blen % 4 or blen > MAX_RECORD or pos + 28 > len(data):
                return False
            ifid, incl = struct.unpack_from(endian + "I8xI", data, pos + 8)
            if ifid or incl > blen - 32:
                return False
            break
        if blen < 12 or blen % 4 or pos + blen > len(data) or (btype == PCAPNG_SHB and pos):
            return False
        content = data[pos + 8:pos + blen - 4]
        if btype == PCAPNG_SHB:
            _collect_comments(content, 16, endian, comments)
        elif btype == 1:
            ifaces.append(_parse_idb(content, endian))
        pos += blen
    if len(ifaces) != 1 or ifaces[0].linktype != LINKTYPE_ETHERNET:
        return False
    cap.interfaces[:] = ifaces
    cap.byte_order, cap.start = endian, pos
    cap.comments.extend(comments)
    return True


def resume_records(cap: CaptureFile) -> Iterator[Record]:
    """The records of a pcapng file from where a fast reader stopped (`cap.resume`), read by the
    general reader with the section and interfaces `pcapng_head` found; its warnings counted on
    from the packets before."""
    offset, count = cap.resume
    f = open(cap.path, "rb")
    f.seek(offset)
    return _pcapng_records(f, b"", cap, endian=cap.byte_order, count=count, first=False)


def _iter_options(content: bytes, start: int, endian: str) -> Iterator[tuple[int, bytes]]:
    pos = start
    while pos + 4 <= len(content):
        code, length = struct.unpack_from(endian + "HH", content, pos)
        if code == 0:
            return
        value = content[pos + 4:pos + 4 + length]
        yield code, value
        pos += 4 + ((length + 3) & ~3)


def _collect_comments(content: bytes, start: int, endian: str, out: list[str]) -> None:
    for code, value in _iter_options(content, start, endian):
        if code == 1:
            out.append(value.decode("utf-8", "replace"))


def _parse_idb(content: bytes, endian: str) -> Interface:
    if len(content) < 8:
        return Interface(linktype=LINKTYPE_ETHERNET)
    linktype, _, snaplen = struct.unpack_from(endian + "HHI", content)
    iface = Interface(linktype=linktype, snaplen=snaplen)
    for code, value in _iter_options(content, 8, endian):
        if code == 2:  # if_name
            iface.name = value.rstrip(b"\0").decode("utf-8", "replace")
        elif code == 9 and value:  # if_tsresol
            v = value[0]
            iface.ts_units = 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
        elif code == 14 and len(value) >= 8:  # if_tsoffset
            iface.ts_offset = struct.unpack_from(endian + "q", value)[0]
    return iface
