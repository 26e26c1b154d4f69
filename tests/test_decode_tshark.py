"""tracer's decoder against tshark, the independent dissector, frame by frame.

The VXLAN frames of these files all have an outer UDP source port above 4789 or equal to it, so
tshark's habit of trying the lower port first does not turn any of them into another protocol
(were one to appear, `-d udp.port==4789,vxlan` alone would not fix it: the mismatch would show
up here as missing inner layers, to be forced with `-d udp.srcport==P,vxlan`).

For every frame of the lab's sample captures and of the public captures in
../shared/pcaps-public/ (tests/factories.PUBLIC), the fields tracer decodes must equal tshark's dissection of the same
bytes: Ethernet and IP addresses of every layer (outer ones first), TTLs, the inner IP ID and
protocol, ports, TCP seq and flags, VXLAN/Geneve VNIs. tshark lists repeated fields outer layer
first (`-E occurrence=a`), the order in which tracer peels tunnels into `Frame.tunnels`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import PUBLIC, PUBLIC_FILES, SAMPLES, SCENARIOS, needs_tshark, pcap_bytes, sample_files, tshark_lines
from tracer.decode import PROTO_TCP, PROTO_UDP, Frame, decode, fmt_ip, fmt_mac
from tracer.capture.pcapio import open_capture
from tracer.decode import LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2

pytestmark = [pytest.mark.tshark, needs_tshark]

FIELDS = ("eth.src", "eth.dst", "sll.src.eth", "ip.src", "ip.dst", "ip.ttl", "ip.id", "ip.proto", "ipv6.src",
          "ipv6.dst", "ipv6.hlim", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.flags", "udp.srcport",
          "udp.dstport", "vxlan.vni", "geneve.vni")
TSHARK_ARGS = ("-T", "fields", "-E", "occurrence=a", "-E", "separator=/t", "-E", "aggregator=,",
               "-o", "tcp.relative_sequence_numbers:FALSE",
               "-o", "ip.defragment:FALSE",  # (frame by frame: fragments as captured; put together: tests/test_defrag.py)
               "-d", "udp.port==4789,vxlan", "-d", "udp.port==8472,vxlan")
ICMP_ERRORS = {3, 4, 5, 11, 12}
ARPHRD_ETHER = 1

SAMPLE_FILES = [p for s in SCENARIOS for p in sample_files(SAMPLES / s)]


def tshark_fields(path: Path) -> list[dict[str, list[str]]]:
    """One dict per frame: field -> its values, outermost layer first."""
    args = [a for f in FIELDS for a in ("-e", f)]
    out = []
    for line in tshark_lines(path, *TSHARK_ARGS, *args):
        cols = line.split("\t")
        out.append({f: [v for v in c.split(",") if v] for f, c in zip(FIELDS, cols, strict=True)})
    return out


def tracer_frames(path: Path) -> list[Frame]:
    cap, records = open_capture(path)
    return [decode(cap.interfaces[r.interface].linktype, r.data, r.orig_len) for r in records]


def tracer_fields(fr: Frame) -> dict[str, list[str]]:
    """tracer's decoding in tshark's terms (field -> values, outer layer first)."""
    eth = [(t.outer_eth_src, t.outer_eth_dst) for t in fr.tunnels] + [(fr.eth_src, fr.eth_dst)]
    d: dict[str, list[str]] = {"sll.src.eth": []}
    if fr.linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        # the cooked header's link-layer address is tshark's sll.src.eth, not an Ethernet layer
        d["sll.src.eth"] = [fmt_mac(eth[0][0])] if eth[0][0] else []
        eth = eth[1:]
    d["eth.src"] = [fmt_mac(s) for s, dst in eth if dst is not None]
    d["eth.dst"] = [fmt_mac(dst) for s, dst in eth if dst is not None]
    ips = [(t.outer_ip_src, t.outer_ip_dst, t.outer_ttl) for t in fr.tunnels] + [(fr.ip_src, fr.ip_dst, fr.ttl)]
    for fam, n, hop in (("ip", 4, "ttl"), ("ipv6", 16, "hlim")):
        layers = [x for x in ips if x[0] is not None and len(x[0]) == n]
        d[f"{fam}.src"] = [fmt_ip(x[0]) for x in layers]
        d[f"{fam}.dst"] = [fmt_ip(x[1]) for x in layers]
        d[f"{fam}.{hop}"] = [str(x[2]) for x in layers]
    inner_v4 = fr.ip_version == 4
    d["ip.id"] = [f"{fr.ip_id:#06x}"] if inner_v4 else []
    d["ip.proto"] = [str(fr.proto)] if inner_v4 and fr.proto is not None else []
    tcp = fr.proto == PROTO_TCP and fr.tcp_seq is not None
    d["tcp.srcport"] = [str(fr.sport)] if tcp else []
    d["tcp.dstport"] = [str(fr.dport)] if tcp else []
    d["tcp.seq"] = [str(fr.tcp_seq)] if tcp else []
    d["tcp.flags"] = [f"{fr.tcp_flags:#06x}"] if tcp else []
    udp_inner = [(fr.sport, fr.dport)] if fr.proto == PROTO_UDP and fr.sport is not None else []
    udp = [(t.udp_sport, t.udp_dport) for t in fr.tunnels if t.udp_sport is not None] + udp_inner
    d["udp.srcport"] = [str(s) for s, _ in udp]
    d["udp.dstport"] = [str(p) for _, p in udp]
    d["vxlan.vni"] = [str(t.vni) for t in fr.tunnels if t.type == "vxlan"]
    d["geneve.vni"] = [f"{t.vni:#08x}" for t in fr.tunnels if t.type == "geneve"]
    return d


def comparable(ts: dict[str, list[str]], fr: Frame) -> dict[str, list[str]]:
    """tshark's fields, less what it dissects that tracer by design does not."""
    ts = {k: list(v) for k, v in ts.items()}
    if fr.icmp_type in ICMP_ERRORS and fr.ip_version == 4:
        # tshark also dissects the IP header quoted inside an ICMP error (one more ip/udp/tcp layer at
        # the end); tracer stops at the ICMP header, whose quoted packet is not the packet's identity.
        for k in ("ip.src", "ip.dst", "ip.ttl", "ip.id", "ip.proto"):
            ts[k] = ts[k][:len(ts[k]) - 1] if len(ts[k]) > 1 else ts[k]
        ts["ip.id"], ts["ip.proto"] = ts["ip.id"][-1:], ts["ip.proto"][-1:]
        for k in ("tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.flags", "udp.srcport", "udp.dstport"):
            ts[k] = [] if k.startswith("tcp") else ts[k][:len([t for t in fr.tunnels if t.udp_sport is not None])]
    else:
        # tshark's ip.id/ip.proto are lists over all IPv4 layers; tracer keeps them for the inner
        # packet only (an inner ARP or IPv6 packet has none: its layers are compared by address)
        inner_v4 = fr.ip_version == 4
        ts["ip.id"], ts["ip.proto"] = (ts["ip.id"][-1:], ts["ip.proto"][-1:]) if inner_v4 else ([], [])
    if fr.linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2) and sll_hatype(fr) != ARPHRD_ETHER:
        # tshark shows any cooked link-layer address; tracer keeps it only when it is an Ethernet MAC
        # (zeek-linux-sll2.pcap is a loopback capture, ARPHRD 772)
        ts["sll.src.eth"] = []
    return ts


def sll_hatype(fr: Frame) -> int:
    off = 2 if fr.linktype == LINKTYPE_LINUX_SLL else 8
    return int.from_bytes(fr.data[off:off + 2], "big")


# Files in which tracer decodes deeper than tshark: there only the layers tshark dissects are compared.
DEEPER_THAN_TSHARK = {
    # IPv4 total length 0 (BIG TCP): tshark marks the outer UDP "Bad length value 0 < 8" and stops;
    # tracer takes the length from the frame, as tcpdump does, and decodes VXLAN -> TCP inside.
    "tcpdump-bigtcp-ipv4-vxlan-ipv4.pcap",
}
INNER_ONLY = ("ip.id", "ip.proto", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.flags")


def mismatches(path: Path) -> list[str]:
    frames = tracer_frames(path)
    ts_frames = tshark_fields(path)
    assert len(frames) == len(ts_frames), f"{path}: tracer read {len(frames)} frames, tshark {len(ts_frames)}"
    out = []
    for n, (fr, ts) in enumerate(zip(frames, ts_frames, strict=True), 1):
        want = comparable(ts, fr)
        got = tracer_fields(fr)
        for k in FIELDS:
            if path.name in DEEPER_THAN_TSHARK:
                if k in INNER_ONLY:
                    continue
                got[k] = got[k][:len(want[k])]
            if got[k] != want[k]:
                out.append(f"{path.name} frame {n} {k}: tracer {got[k]} tshark {want[k]}")
    return out


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_sample_captures_agree_with_tshark(path):
    assert mismatches(path) == []


@pytest.mark.parametrize("path", PUBLIC_FILES, ids=lambda p: p.name)
def test_public_captures_agree_with_tshark(path):
    assert mismatches(path) == []


def test_every_file_was_compared():
    """The parametrization above must not silently shrink to nothing."""
    assert len(SAMPLE_FILES) == 60  # 7 scenarios x 8 points, dns-service 2 more (the DNS pod), 2 tcpdump -i any files
    assert len(PUBLIC_FILES) == 15


@pytest.mark.parametrize("name", sorted(DEEPER_THAN_TSHARK))
def test_where_tracer_decodes_deeper_tshark_agrees_on_the_inner_frame(tmp_path, name):
    """Hand tshark the inner Ethernet frame tracer found inside the tunnel: it must dissect it
    the same way (so the layers tracer alone decoded are checked too)."""
    frames = tracer_frames(PUBLIC / name)
    inner = []
    for fr in frames:
        assert fr.tunnels and fr.tunnels[-1].type == "vxlan" and fr.proto == PROTO_TCP, name
        inner.append(fr.data[fr.ip_offset - 14:])  # the inner Ethernet header sits right before the inner IP
    path = tmp_path / "inner.pcap"
    path.write_bytes(pcap_bytes(inner))
    [ts] = tshark_fields(path)
    fr = frames[0]
    got = {k: v[-1:] for k, v in tracer_fields(fr).items()}
    for k in ("eth.src", "eth.dst", "ip.src", "ip.dst", "ip.ttl", "ip.id", "ip.proto", "tcp.srcport", "tcp.dstport",
              "tcp.seq", "tcp.flags"):
        assert got[k] == ts[k], k


def test_pyshark_agrees_on_the_sample_underlay_capture():
    """The same check through pyshark (PDML mode keeps the inner layers of VXLAN frames; it is slow,
    so one small file: the encapsulated request and reply on worker1's NIC)."""
    pyshark = pytest.importorskip("pyshark")
    path = SAMPLES / "http-get" / "worker1" / "eth1.pcap"
    frames = tracer_frames(path)
    cap = pyshark.FileCapture(str(path), decode_as={"udp.port==4789": "vxlan"},
                              override_prefs={"tcp.relative_sequence_numbers": "FALSE"})
    try:
        packets = list(cap)
    finally:
        cap.close()
        _drop_pyshark_child_watcher()
    assert len(packets) == len(frames) == 12
    for n, (pkt, fr) in enumerate(zip(packets, frames, strict=True), 1):
        names = [layer.layer_name for layer in pkt.layers]
        assert names[:7] == ["eth", "ip", "udp", "vxlan", "eth", "ip", "tcp"], n  # then http, json, ...
        o_eth, o_ip, o_udp, vx, i_eth, i_ip, i_tcp = pkt.layers[:7]
        [t] = fr.tunnels
        assert (fmt_mac(t.outer_eth_src), fmt_mac(t.outer_eth_dst)) == (o_eth.src, o_eth.dst)
        assert (fmt_ip(t.outer_ip_src), fmt_ip(t.outer_ip_dst), t.outer_ttl) == (o_ip.src, o_ip.dst, int(o_ip.ttl))
        assert (t.udp_sport, t.udp_dport) == (int(o_udp.srcport), int(o_udp.dstport))
        assert t.vni == int(vx.vni) == 4096
        assert (fmt_mac(fr.eth_src), fmt_mac(fr.eth_dst)) == (i_eth.src, i_eth.dst)
        assert (fmt_ip(fr.ip_src), fmt_ip(fr.ip_dst), fr.ttl) == (i_ip.src, i_ip.dst, int(i_ip.ttl))
        assert (fr.ip_id, fr.proto) == (int(i_ip.id, 16), int(i_ip.proto))
        assert (fr.sport, fr.dport, fr.tcp_seq) == (int(i_tcp.srcport), int(i_tcp.dstport), int(i_tcp.seq))
        assert fr.tcp_flags == int(i_tcp.flags, 16)
        assert fr.payload_len == int(i_tcp.len)


def _drop_pyshark_child_watcher() -> None:
    """pyshark installs asyncio's SafeChildWatcher: a SIGCHLD handler writing to its loop's
    wakeup pipe. That loop never runs again, so every later child of this process fills the
    pipe until each SIGCHLD is reported as a BlockingIOError. Closing the watcher takes both back."""
    import asyncio
    import signal
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # child watchers are deprecated in 3.12
        asyncio.get_child_watcher().close()
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
