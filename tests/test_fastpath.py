"""The summary fast path (tracer.capture.fastpath.pcap_sightings) sees exactly what the full decoder sees.

`tracer analyze --summary` reads classic pcap files of Ethernet frames without building a Frame
per packet. Everything it finds must be what the general path (decode() per frame) finds: frame
by frame on real captures and on mutated frames, and as the whole summary document.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import CURL_MAC, PUBLIC, SAMPLES, eth, inner_syn, ipv4, pcap_bytes, tcp, udp, vxlan, vxlan_syn_frame
from tracer.capture.inputs import inputs_from_paths
from tracer.correlate.engine import CorrelationOptions, Correlator
from tracer.decode import VXLAN_PORTS, decode
from tracer.capture.defrag import Defrag
from tracer.capture.fastpath import pcap_sightings
from tracer.capture.sightings import PointStats, from_frame
from tracer.render.jsondoc import dumps
from tracer.capture.pcapio import CaptureFile, open_capture, pcapng_head, resume_records
from tracer.decode import LINKTYPE_ETHERNET
from tracer.correlate.describe import build_trace

def _ethernet_pcap(p: Path) -> bool:
    cap, records = open_capture(p)
    records.close()
    return cap.format == "pcap" and bool(cap.interfaces) and cap.interfaces[0].linktype == LINKTYPE_ETHERNET


ETHERNET_PCAPS = sorted(p for p in list(SAMPLES.rglob("*.pcap")) + list(PUBLIC.glob("*.pcap")) if _ethernet_pcap(p))


def fast(path: Path) -> tuple[list[tuple], PointStats, list[str], CaptureFile]:
    """The fast reader's sightings of a file, then (a pcapng file it left part of) the general
    reader's from where it stopped, as CaptureSet._read_on does; all as point 0."""
    stats, warnings = PointStats(), []
    cap, records = open_capture(path)
    records.close()
    if cap.format == "pcapng":
        assert pcapng_head(cap)
    out = [o for batch in pcap_sightings(cap, 0, stats, VXLAN_PORTS, warnings.append) for o in batch]
    if cap.resume is not None:
        out += decoded(cap, resume_records(cap), stats)
        warnings += cap.warnings
    return out, stats, warnings, cap


def decoded(cap: CaptureFile, records, stats: PointStats) -> list[tuple]:
    """The sightings of records decoded in full, as point 0 (the general reader)."""
    out = []
    defrag = Defrag()  # (outer fragments put together, as both readers do)

    def sight(linktype, data, orig, t, pieces):
        fr = decode(linktype, data, orig)
        e = stats.add_frame(fr, t)
        if pieces:
            stats.frames += len(pieces) - 1
        if e is not None:
            out.append(from_frame(t, 0, fr, e, False))

    for r in records:
        linktype = cap.interfaces[r.interface].linktype
        for data, orig, t, pieces, _ in defrag.feed(linktype, r.data, r.orig_len, r.time):
            sight(linktype, data, orig, t, pieces)
    for data, orig, t, pieces, _ in defrag.flush():
        sight(LINKTYPE_ETHERNET, data, orig, t, pieces)
    return out


def general(path: Path) -> tuple[list[tuple], PointStats, list[str]]:
    cap, records = open_capture(path)
    stats = PointStats()
    return decoded(cap, records, stats), stats, cap.warnings


def same(path: Path) -> CaptureFile:
    """The fast reader gives what the general reader gives: sightings, warnings, statistics."""
    (a, sa, wa, cap), (b, sb, wb) = fast(path), general(path)
    assert a == b
    assert wa == wb
    for attr in PointStats.__slots__:
        assert getattr(sa, attr) == getattr(sb, attr), attr
    return cap


def test_there_are_files_with_both_shapes_to_compare():
    names = {p.name for p in ETHERNET_PCAPS}
    assert "eth1.pcap" in names and "skydive-vxlan-snaplen256.pcap" in names and len(ETHERNET_PCAPS) >= 20


@pytest.mark.parametrize("path", ETHERNET_PCAPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_frame_of_a_real_capture_gives_the_same_sighting(path):
    same(path)


def summary(paths: list[str], fast_path: bool) -> dict:
    c = Correlator(inputs_from_paths(paths), CorrelationOptions(keep_packets=False, fast=fast_path)).run()
    return json.loads(dumps(build_trace(c), summary=True))


@pytest.mark.parametrize("scenario", ["http-get", "vxlan-drop", "clusterip-dnat"])
def test_the_summary_is_the_same_either_way(scenario):
    assert summary([str(SAMPLES / scenario)], True) == summary([str(SAMPLES / scenario)], False)


def test_the_summary_of_the_public_captures_is_the_same_either_way():
    paths = [str(p) for p in sorted(PUBLIC.glob("*.pcap*"))]
    assert summary(paths, True) == summary(paths, False)


# --- mutated frames: every check of the fast path against the decoder --------------------------

SEEDS = [vxlan_syn_frame(), eth(CURL_MAC, "ee:ee:ee:ee:ee:ee", 0x0800, inner_syn(ttl=64)),
         eth("02:00:00:00:00:01", "02:00:00:00:00:02", 0x0800,
             ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, flags=0x18, payload=b"GET / HTTP/1.1\r\n\r\n"))),
         eth("02:00:00:00:00:01", "02:00:00:00:00:02", 0x0800,
             ipv4("192.168.1.1", "192.168.1.2", 17, udp(40000, 4789, vxlan(4096, eth(
                 "02:00:00:00:00:03", "02:00:00:00:00:04", 0x0800,
                 ipv4("10.0.0.1", "10.0.0.2", 17, udp(5353, 53, b"\x12\x34" + b"\0" * 30)))))))]
# Byte positions where the fast path decides: ethertypes, IHL, lengths, fragment bits, protocols,
# ports, VXLAN flags, TCP data offset, in the outer and the inner frame.
HOT = sorted({12, 13, 14, 16, 17, 20, 21, 23, 34, 35, 36, 37, 38, 39, 42, 62, 63, 64, 66, 67, 70, 71, 73, 96, 46})
MUTATE = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MUTATE
@given(seed=st.sampled_from(range(len(SEEDS))),
       edits=st.lists(st.tuples(st.sampled_from(HOT) | st.integers(0, 140), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 160))
def test_mutated_frames_give_the_same_sighting_either_way(seed, edits, cut):
    data = bytearray(SEEDS[seed])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    frames = [bytes(data), bytes(data[:cut])]
    fd, name = tempfile.mkstemp(suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pcap_bytes(frames))
        same(Path(name))
    finally:
        os.unlink(name)


def test_a_file_going_back_in_time_has_the_same_first_and_last_either_way(tmp_path, monkeypatch):
    # (the point's capture window: its earliest and latest frame, not its first and last record)
    import tracer.capture.fastpath as fastpath
    monkeypatch.setattr(fastpath, "CHUNK", 256)  # (several chunks)
    t = 1_700_000_000.0
    p = tmp_path / "x.pcap"
    p.write_bytes(pcap_bytes([SEEDS[i % len(SEEDS)] for i in range(8)], times=[t + d for d in (10, 0, 5, 20, 3, 7, 1, 2)]))
    same(p)
    assert fast(p)[1].first == t and fast(p)[1].last == t + 20


# --- a synthetic capture set ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    """Six points, 30,024 frames of 417 connections replayed from pcaps/http-get (bench/make_captures.py)."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("six") / "set"
    subprocess.run([sys.executable, str(Path(__file__).parent.parent / "bench" / "make_captures.py"), str(out),
                    "--frames", "30000"], check=True, capture_output=True)
    return str(out)


# --- shared packet shapes: the same answer as working out every packet on its own ---------------

class _NoCache(dict):
    def __setitem__(self, key, value):
        pass


def shared_and_alone(path: Path) -> tuple[dict, dict, Correlator]:
    """The summary with packet shapes shared, the summary with every packet worked out alone,
    and the first run's correlator."""
    docs, first = [], None
    for cache in (True, False):
        c = Correlator(inputs_from_paths([str(path)]), CorrelationOptions(keep_packets=False))
        if not cache:
            c.order.shapes = _NoCache()
        docs.append(json.loads(dumps(build_trace(c.run()), summary=True)))
        first = first or c
    return docs[0], docs[1], first


def _coarse_copy(src: str, dst: Path, resolution: float) -> None:
    """The capture set with timestamps cut to `resolution`: many sightings at the same instant.
    worker1's NIC stamps some frames up to 9 µs early, so that some packets have their NIC
    sighting before, some at the same instant as, some after the VXLAN device's."""
    from factories import pcap_bytes
    for f in Path(src).rglob("*.pcap"):
        cap, records = open_capture(f)
        recs = list(records)
        early = f.parent.name == "worker1" and f.name == "eth1.pcap"
        stamped = sorted(((r.time - (i % 10) * 1e-6 if early else r.time), r.data) for i, r in enumerate(recs))
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(pcap_bytes([d for _, d in stamped], nanos=True,
                                   times=[round(t / resolution) * resolution for t, _ in stamped]))


@pytest.mark.parametrize("resolution", [1e-3, 1e-5, 2e-6, 1e-6])
def test_shared_shapes_give_what_each_packet_alone_gives_also_with_ties(synthetic, tmp_path, resolution):
    _coarse_copy(synthetic, tmp_path, resolution)
    shared, alone, c = shared_and_alone(tmp_path)
    assert shared == alone
    assert len(c.order.shapes) >= (0 if resolution >= 1e-3 else 2)


def test_a_file_out_of_time_order_turns_the_shortcuts_off_and_changes_nothing(synthetic, tmp_path):
    from factories import pcap_bytes
    src = Path(synthetic)
    for f in src.rglob("*.pcap"):
        cap, records = open_capture(f)
        recs = [(r.time, r.data) for r in records]
        if f.name == "eth1.pcap" and f.parent.name == "worker2":
            recs[0], recs[-1] = recs[-1], recs[0]  # the last frame written first, the first last
        out = tmp_path / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(pcap_bytes([d for _, d in recs], nanos=True, times=[t for t, _ in recs]))
    shared, alone, c = shared_and_alone(tmp_path)
    assert not c.in_order
    assert shared == alone and shared["summary"]["frames"] == 30024


def test_sightings_at_the_same_instant_keep_the_files_order_wherever_batches_end(tmp_path):
    # n/x1 has 1025 IP frames (the general reader hands them on in batches of 1024), its last two at
    # the same instant T as the packet's sighting at n/x2: x1 comes first, as heapq.merge would have it.
    from factories import pcap_bytes
    def pk(sport: int, seq: int, ipid: int) -> bytes:
        return eth("02:00:00:00:00:01", "02:00:00:00:00:02", 0x0800,
                   ipv4("10.0.0.1", "10.0.2.7", 6, tcp(sport, 80, seq=seq, ack=0, flags=0x10), ip_id=ipid))
    t = 1700000000.0
    x1 = [(t + i / 1000, pk(30000, 1000 + i, i)) for i in range(1023)] + [(t + 5, pk(30000, 5000, 5000)),
                                                                          (t + 5, pk(40000, 7000, 7000))]
    x2 = [(t + 5, pk(40000, 7000, 7000)), (t + 6, pk(50000, 9000, 9000))]
    for name, recs in (("x1", x1), ("x2", x2)):
        (tmp_path / "n").mkdir(exist_ok=True)
        (tmp_path / "n" / f"{name}.pcap").write_bytes(pcap_bytes([f for _, f in recs], times=[s for s, _ in recs]))
    ways = []
    for fast_path in (True, False):
        doc = summary([str(tmp_path)], fast_path)
        ways.append([f["summary"]["way"] for f in doc["flows"] if f["client"].endswith(":40000")])
    assert ways[0] == ways[1] == [{"request": ["n/x1", "n/x2"]}]


def test_a_big_summary_is_written_a_flow_a_line_with_the_same_content_and_key_order(synthetic, monkeypatch):
    import tracer.render.jsondoc as jsondoc
    c = Correlator(inputs_from_paths([synthetic]), CorrelationOptions(keep_packets=False)).run()
    trace = build_trace(c)
    monkeypatch.setattr(jsondoc, "COMPACT_FLOWS", 100)
    text = jsondoc.dumps(trace, summary=True)
    doc = jsondoc.trace_to_dict(trace, summary=True)
    assert json.loads(text) == doc and list(json.loads(text)) == list(doc)
    flow_lines = [line for line in text.splitlines() if line.startswith('    {"client"')]
    assert len(flow_lines) == len(doc["flows"]) == 417


def test_the_merge_does_not_hold_a_whole_file_of_one_instant(monkeypatch):
    # pcapng simple packet blocks carry no time: every frame of such a file is at 0.0.
    import tracer.correlate.merge as merge
    monkeypatch.setattr(merge, "TIE_HOLD", 50)
    def stream(tag: int, batches: int):
        for b in range(batches):
            yield [(0.0, tag, b, i) for i in range(20)]
    out, biggest = [], 0
    for batch in merge.merge_batches([stream(0, 30), stream(1, 30)], lambda: None):
        biggest = max(biggest, len(batch))
        out.extend(batch)
    assert len(out) == 1200 and sorted(out) == sorted((0.0, t, b, i) for t in (0, 1) for b in range(30) for i in range(20))
    assert biggest <= 2 * (50 + 20)
