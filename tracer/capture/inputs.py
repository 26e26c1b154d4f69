"""Capture inputs: which file is which capture point, from the command line's paths.

Directories laid out as `<node>/<interface>.pcap[ng]` (as `tracer follow --save` writes them),
single files (node = parent directory, interface = file stem), `--point NAME=FILE` overrides,
and `tcpdump -i any` captures, which hold every interface of a node.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from tracer.capture.pcapio import open_capture
from tracer.decode import LINKTYPE_LINUX_SLL2
from tracer.errors import CaptureFileError

CAPTURE_SUFFIXES = (".pcapng", ".pcap", ".cap")


@dataclass(frozen=True, kw_only=True)
class CaptureInput:
    """One capture file and the point it belongs to."""

    path: str
    node: str
    interface: str
    forced: bool = False
    """Given as --point NAME=FILE: every interface in the file is this point."""
    split_node: str | None = None
    """The node whose every interface a `tcpdump -i any` capture in this file holds (frames in
    Linux cooked v2 from more than one interface index): it becomes one point per interface,
    `<split_node>/<interface>`. None: the file is one point whatever it holds."""


def inputs_from_paths(paths: Iterable[str], points: Iterable[str] = ()) -> list[CaptureInput]:
    """Capture inputs from the command line: directories laid out as <node>/<interface>.pcap[ng],
    single files (node = parent directory name, interface = file stem), and NAME=FILE overrides."""
    out: list[CaptureInput] = []
    for spec in points:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CaptureFileError(f"--point {spec!r}: expected NAME=FILE", "e.g. --point worker1/eth1=node1-eth1.pcap")
        node, _, iface = name.rpartition("/")
        # NAME is a node (no slash) or node/any: a tcpdump -i any capture in FILE is split per interface.
        whole = iface if not node else node if iface == "any" else None
        out.append(CaptureInput(path=path, node=node or "-", interface=iface, forced=True, split_node=whole))
    for path in paths:
        if os.path.isdir(path):
            found = _scan_dir(path)
            if not found:
                raise CaptureFileError(f"{path}: no capture files in it",
                                       "lay captures out as <node>/<interface>.pcap (or .pcapng) below the directory")
            out.extend(found)
        else:
            out.append(_file_input(path))
    return out


def _file_input(path: str, in_node_dir: bool = False) -> CaptureInput:
    """A file's point: <parent directory>/<file stem>. Should it hold a tcpdump -i any capture,
    its node is the directory when the file is `any.pcap` or sits in a node's directory of a
    laid-out tree (`in_node_dir`), else the file stem (`worker1.pcap`)."""
    base = os.path.basename(path)
    stem = base
    for suf in CAPTURE_SUFFIXES:
        if base.endswith(suf):
            stem = base[: -len(suf)]
            break
    node = os.path.basename(os.path.dirname(os.path.abspath(path))) or "-"
    return CaptureInput(path=path, node=node, interface=stem, split_node=node if in_node_dir or stem == "any" else stem)


def _scan_dir(root: str) -> list[CaptureInput]:
    out = []
    top = os.path.normpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(CAPTURE_SUFFIXES):
                out.append(_file_input(os.path.join(dirpath, name), in_node_dir=os.path.normpath(dirpath) != top))
    return out


def whole_node(path: str, interface: int, iface) -> bool:
    """Whether a file's interface holds a `tcpdump -i any` capture: Linux cooked v2 frames from
    more than one interface index (read ahead in a second pass over the file, until a second one
    shows up)."""
    if iface.linktype != LINKTYPE_LINUX_SLL2:
        return False
    _, records = open_capture(path)
    first = None
    try:
        for rec in records:
            if rec.interface == interface and len(rec.data) >= 8:
                if first is None:
                    first = rec.data[4:8]
                elif rec.data[4:8] != first:
                    return True
    finally:
        records.close()
    return False


def total_size(paths: Iterable[str]) -> int:
    """Bytes of the files together (those that cannot be read count 0: reading them says why)."""
    size = 0
    for path in paths:
        try:
            size += os.path.getsize(path)
        except OSError:
            pass
    return size
