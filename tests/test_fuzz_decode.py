"""Fuzzing: random and mutated bytes never make tracer raise.

`decode()` promises never to raise on any input, for every link type; the reader and the whole
analysis may refuse a file, but only with a `TracerError` (one line and a hint), never a crash.
Mutations start from real frames (the lab's VXLAN frames, the public Geneve, GRE and
GRE/ERSPAN/VXLAN captures) so that they reach deep into the tunnel decoders.
"""

from __future__ import annotations

import io
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import PUBLIC, SAMPLES, geneve, gre, eth, inner_syn, ipv4, udp, vxlan_syn_frame, NODE1, NODE2
from tracer.app.analyze import AnalyzeRequest, analyze
from tracer.render.analysis import show
from tracer.decode import Frame, decode
from tracer.errors import TracerError
from tracer.capture.pcapio import open_capture
from tracer.decode import LINKTYPE_NAMES

LINKTYPES = sorted(LINKTYPE_NAMES) + [147, 65535]  # every decoded link type and two it does not know
FUZZ = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
FILE_FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

SEED_FILES = [
    SAMPLES / "http-get" / "worker1" / "eth1.pcap",
    SAMPLES / "http-get" / "curl" / "eth0.pcap",
    PUBLIC / "tcpdump-geneve-ovs-ssh.pcap",
    PUBLIC / "arkime-gre-erspan-vxlan-http.pcap",
    PUBLIC / "zeek-gre-sample.pcap",
    PUBLIC / "zeek-linux-sll2.pcap",
    PUBLIC / "tcpdump-nsec-sll.pcap",
    PUBLIC / "pcapngtest-016-bigendian-spb-nrb.pcapng",
]


def _seed_frames() -> list[tuple[int, bytes]]:
    out = []
    for path in SEED_FILES:
        if not path.exists():
            continue
        cap, records = open_capture(path)
        for i, r in enumerate(records):
            if i < 6:
                out.append((cap.interfaces[r.interface].linktype, r.data))
    # built ones: Geneve and GRE with a key around the lab's SYN
    out.append((1, vxlan_syn_frame()))
    out.append((1, eth("02:00:00:00:00:01", "02:00:00:00:00:02", 0x0800,
                       ipv4(NODE1, NODE2, 17, udp(40000, 6081, geneve(7, vxlan_syn_frame()[50:], b"\0\x01\x80\x01" * 2))))))
    out.append((1, eth("02:00:00:00:00:01", "02:00:00:00:00:02", 0x0800, ipv4(NODE1, NODE2, 47, gre(inner_syn(), key=9)))))
    return out


SEEDS = _seed_frames()
SEED_FILE_BYTES = [p.read_bytes() for p in SEED_FILES if p.exists()]


@st.composite
def mutated(draw, seeds):
    """A seed with a few bytes flipped, replaced, inserted or deleted, and maybe cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[i] = draw(st.sampled_from([0, 0xFF, 0x08, 0x45, 0x65, 0x58, 0x12, 0xB5, 0x17]))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:i + draw(st.integers(1, 8))]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def check_frame(linktype: int, data: bytes, orig_len: int | None = None) -> Frame:
    fr = decode(linktype, data, orig_len)
    assert isinstance(fr, Frame) and fr.linktype == linktype and fr.caplen == len(data)
    # whatever was decoded is self-consistent: offsets inside the frame, tunnels outermost first
    assert fr.ip_offset < len(data) or fr.ip_offset == -1 or fr.truncated
    assert all(t.type in ("vxlan", "geneve", "gre", "erspan", "ipip") for t in fr.tunnels)
    return fr


@FUZZ
@given(linktype=st.sampled_from(LINKTYPES), data=st.binary(max_size=256), orig=st.none() | st.integers(0, 1 << 20))
def test_decode_random_bytes_never_raises(linktype, data, orig):
    check_frame(linktype, data, orig)


@FUZZ
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_decode_mutated_real_frames_never_raises(seed, data):
    linktype, frame = seed
    check_frame(linktype, data.draw(mutated([frame])))
    # the same bytes under another link type, too
    check_frame(data.draw(st.sampled_from(LINKTYPES)), frame)


def test_seed_frames_reach_the_tunnel_decoders():
    """The fuzzer's seeds really hold the tunnels it is meant to shake."""
    kinds = {t.type for lt, d in SEEDS for t in decode(lt, d).tunnels}
    assert {"vxlan", "geneve", "gre", "erspan"} <= kinds


def analyze_bytes(data: bytes, suffix: str) -> None:
    """Run the whole analysis on one file; anything but a TracerError fails the test."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "worker1", "eth1" + suffix)
        os.mkdir(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        for summary in (False, True):
            try:
                show(analyze(AnalyzeRequest(paths=(path,), all_flows=True, summary=summary, output="json")), io.StringIO(),
                     output="json", summary=summary)
            except TracerError as e:
                assert e.message and e.exit_code != 0


@FILE_FUZZ
@given(data=st.binary(max_size=512), magic=st.sampled_from([b"", bytes.fromhex("d4c3b2a1"), bytes.fromhex("a1b2c3d4"),
                                                             bytes.fromhex("4d3cb2a1"), bytes.fromhex("0a0d0d0a")]))
def test_analyze_random_files_raises_only_tracer_errors(data, magic):
    analyze_bytes(magic + data, ".pcap")


@FILE_FUZZ
@given(data=mutated(SEED_FILE_BYTES))
def test_analyze_mutated_capture_files_raises_only_tracer_errors(data):
    analyze_bytes(data, ".pcapng" if data[:4] == bytes.fromhex("0a0d0d0a") else ".pcap")


@pytest.mark.parametrize("path", [p for p in SEED_FILES if p.exists()], ids=lambda p: p.name)
def test_every_cut_of_a_real_file_is_read_or_refused(path):
    """Cut a real file at every 7th byte: each prefix is read (with a warning if cut in a record)."""
    data = path.read_bytes()
    for end in range(0, min(len(data), 1200), 7):
        analyze_bytes(data[:end], path.suffix)
