"""Deterministic packet, capture-file and CLI helpers for tracer's tests (mitmproxy-style factories).

Packets are built byte by byte with struct so a test says exactly which header holds what; capture
files are written the same way, in every format pcapio reads.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tracer.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "pcaps"
SCENARIOS = ("http-get", "vxlan-drop", "policy-drop", "clusterip-dnat", "any-http-get", "bytes-offloads", "vxlan-fragments",
             "dns-service")
# Third-party captures, read where they are (../shared/pcaps-public beside the checkout; this
# machine's /work/shared when the checkout is elsewhere; TRACER_PUBLIC_PCAPS to name another place).
PUBLIC = next((p for p in (Path(os.environ.get("TRACER_PUBLIC_PCAPS", ROOT.parent / "shared" / "pcaps-public")),
                           Path("/work/shared/pcaps-public")) if p.is_dir()), ROOT.parent / "shared" / "pcaps-public")
PUBLIC_FILES = sorted(p for p in PUBLIC.glob("*") if p.suffix in (".pcap", ".pcapng")) if PUBLIC.is_dir() else []

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
needs_editcap = pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap is not installed")


# ---- the CLI, in-process ----

def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`tracer ARGV` in this process: (exit code, stdout, stderr). Anything but SystemExit propagates."""
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def analyze_json(capsys, *argv: str) -> dict:
    code, out, err = run_cli(capsys, "analyze", *argv, "-o", "json")
    assert code == 0, err
    return json.loads(out)


def path_doc(scenario: str) -> dict:
    return json.loads((SAMPLES / scenario / "path.json").read_text())


def sample_files(scenario_dir: Path) -> list[Path]:
    return sorted(scenario_dir.glob("*/*.pcap"))


# ---- headers ----

def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def ip4(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


def eth(src: str, dst: str, ethertype: int, payload: bytes) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ip_id: int = 1, df: bool = True) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ip_id, 0x4000 if df else 0, ttl, proto, 0,
                      ip4(src), ip4(dst))
    return hdr + payload


def tcp(sport: int, dport: int, *, seq: int = 1000, ack: int = 0, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def arp(op: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    """An ARP packet for Ethernet/IPv4 (op 1 request, 2 reply), to go in an Ethernet frame (0x0806)."""
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac(sender_mac), ip4(sender_ip), mac(target_mac),
                       ip4(target_ip))


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def vxlan(vni: int, inner_frame: bytes) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8) + inner_frame


def geneve(vni: int, inner_frame: bytes, options: bytes = b"") -> bytes:
    return struct.pack("!BBHI", len(options) // 4, 0, 0x6558, vni << 8) + options + inner_frame


def gre(inner_ip: bytes, key: int | None = None) -> bytes:
    if key is None:
        return struct.pack("!HH", 0, 0x0800) + inner_ip
    return struct.pack("!HHI", 0x2000, 0x0800, key) + inner_ip


# The lab's request SYN, as at worker1/eth1 (addresses from pcaps/README.md).
CURL, HTTPBIN = "172.18.166.139", "172.18.104.14"
CURL_MAC, HTTPBIN_MAC = "0a:58:ac:12:a6:8b", "0a:58:ac:12:68:0e"
VXLAN1_MAC, VXLAN2_MAC = "66:ca:11:c0:00:01", "66:ca:11:c0:00:02"
NIC1_MAC, NIC2_MAC = "52:54:00:00:56:0b", "52:54:00:00:56:0c"
NODE1, NODE2 = "192.168.56.11", "192.168.56.12"


def inner_syn(ttl: int = 63, ip_id: int = 0x0735) -> bytes:
    """The SYN as an IP packet (no link layer)."""
    return ipv4(CURL, HTTPBIN, 6, tcp(45688, 80, seq=1066748353), ttl=ttl, ip_id=ip_id)


def vxlan_syn_frame() -> bytes:
    """The SYN, VXLAN-encapsulated on the underlay: outer Ethernet/IPv4/UDP 4789/VXLAN 4096/inner Ethernet."""
    inner = eth(VXLAN1_MAC, VXLAN2_MAC, 0x0800, inner_syn())
    return eth(NIC1_MAC, NIC2_MAC, 0x0800, ipv4(NODE1, NODE2, 17, udp(49444, 4789, vxlan(4096, inner)), ip_id=0x1F7D))


# ---- capture files ----

def frame_times(n: int, times: list[float] | None, t0: float = 1700000000.0) -> list[float]:
    """The given timestamps, or frame i at t0 + i ms."""
    return list(times) if times is not None else [t0 + i / 1000 for i in range(n)]


def pcap_bytes(frames: list[bytes], *, linktype: int = 1, nanos: bool = False, endian: str = "<",
               times: list[float] | None = None) -> bytes:
    """A classic pcap file: µs or ns timestamps, either byte order."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    div = 10 ** 9 if nanos else 10 ** 6
    for t, data in zip(frame_times(len(frames), times), frames, strict=True):
        ticks = round(t * div)
        out.append(struct.pack(endian + "IIII", ticks // div, ticks % div, len(data), len(data)) + data)
    return b"".join(out)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _opt(endian: str, code: int, value: bytes) -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + _pad4(value)


def _block(endian: str, btype: int, body: bytes) -> bytes:
    body = _pad4(body)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def pcapng_bytes(interfaces: list[tuple[int, str | None]], packets: list[tuple[int, bytes]], *, endian: str = "<",
                 comment: str | None = "written by tests/factories.py", simple: bool = False,
                 times: list[float] | None = None) -> bytes:
    """A pcapng file: interfaces as (linktype, name), packets as (interface id, frame).

    `simple`: packets as Simple Packet Blocks (interface 0 only, no timestamps). Every packet
    carries a comment, as do the section and each interface.
    """
    end = _opt(endian, 0, b"")
    shb = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    if comment:
        shb += _opt(endian, 1, comment.encode()) + end
    out = [_block(endian, 0x0A0D0D0A, shb)]
    for linktype, name in interfaces:
        opts = _opt(endian, 1, b"interface comment")
        if name:
            opts += _opt(endian, 2, name.encode())
        out.append(_block(endian, 1, struct.pack(endian + "HHI", linktype, 0, 0) + opts + end))
    for i, (t, (ifid, data)) in enumerate(zip(frame_times(len(packets), times), packets, strict=True)):
        if simple:
            out.append(_block(endian, 3, struct.pack(endian + "I", len(data)) + _pad4(data)))
            continue
        ts = round(t * 1e6)
        body = struct.pack(endian + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + _pad4(data)
        body += _opt(endian, 1, f"packet {i}".encode()) + end
        out.append(_block(endian, 6, body))
    return b"".join(out)


def sll_frame(ip_packet: bytes, *, src: str = CURL_MAC, pkttype: int = 4) -> bytes:
    """Linux cooked v1 (link type 113) header + IPv4 packet."""
    return struct.pack("!HHH", pkttype, 1, 6) + mac(src) + b"\0\0" + struct.pack("!H", 0x0800) + ip_packet


def sll2_frame(ip_packet: bytes, *, src: str = CURL_MAC, pkttype: int = 4, ifindex: int = 3) -> bytes:
    """Linux cooked v2 (link type 276) header + IPv4 packet."""
    return struct.pack("!HHIHBB", 0x0800, 0, ifindex, 1, pkttype, 6) + mac(src) + b"\0\0" + ip_packet


def editcap(*args: str | Path) -> None:
    subprocess.run(["editcap", *map(str, args)], check=True, capture_output=True)


def tshark_lines(path: Path, *args: str) -> list[str]:
    proc = subprocess.run(["tshark", "-n", "-r", str(path), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


# ---- processes ----

def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int(Path(d, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def wait_for(what, timeout: float = 10.0, step: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out")
