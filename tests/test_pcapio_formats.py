"""pcap and pcapng in every flavour tracer reads: the same packets must come out the same way.

The reference is the lab's real VXLAN capture (pcaps/http-get/worker1/eth1.pcap) and the client
pod's own capture; each is rewritten in another format (by editcap, or byte by byte in
tests/factories.py) and must yield the same frames, timestamps and decoding.
"""

from __future__ import annotations

import struct

import pytest

from factories import (
    SAMPLES, analyze_json, editcap, needs_editcap, pcap_bytes, pcapng_bytes, sll2_frame, sll_frame,
)
from tracer.decode import decode, fmt_mac
from tracer.capture.pcapio import open_capture
from tracer.decode import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW

UNDERLAY = SAMPLES / "http-get" / "worker1" / "eth1.pcap"
POD = SAMPLES / "http-get" / "curl" / "eth0.pcap"


def read(path):
    cap, records = open_capture(path)
    recs = list(records)
    return cap, recs


def identity_fields(linktype: int, data: bytes, orig_len: int) -> tuple:
    """What a decoded frame says about the packet (inner packet and every tunnel)."""
    fr = decode(linktype, data, orig_len)
    tunnels = tuple((t.type, t.vni, t.outer_ip_src, t.outer_ip_dst, t.outer_eth_src, t.udp_sport) for t in fr.tunnels)
    return (fr.ip_src, fr.ip_dst, fr.ttl, fr.ip_id, fr.proto, fr.sport, fr.dport, fr.tcp_seq, fr.tcp_ack,
            fr.tcp_flags, fr.payload_len, fr.undecoded, fr.truncated, tunnels)


@pytest.fixture(scope="module")
def reference():
    cap, recs = read(UNDERLAY)
    assert cap.format == "pcap" and cap.interfaces[0].linktype == LINKTYPE_ETHERNET and len(recs) == 12
    return recs


def assert_same_records(recs, reference, *, linktype=LINKTYPE_ETHERNET, times=True, interface=0):
    assert len(recs) == len(reference)
    for r, ref in zip(recs, reference, strict=True):
        assert r.data == ref.data and r.orig_len == ref.orig_len and r.interface == interface
        if times:
            assert r.time == pytest.approx(ref.time, abs=1e-6)
        assert identity_fields(linktype, r.data, r.orig_len) == identity_fields(LINKTYPE_ETHERNET, ref.data, ref.orig_len)


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nanos", [False, True], ids=["us", "ns"])
def test_pcap_byte_orders_and_resolutions(tmp_path, reference, endian, nanos):
    p = tmp_path / "f.pcap"
    p.write_bytes(pcap_bytes([r.data for r in reference], nanos=nanos, endian=endian, times=[r.time for r in reference]))
    cap, recs = read(p)
    assert cap.format == "pcap" and cap.interfaces[0].ts_div == (1e9 if nanos else 1e6)
    assert cap.warnings == []
    assert_same_records(recs, reference)


def test_nanosecond_timestamps_keep_their_precision(tmp_path, reference):
    t = 1795706828.123456789
    p = tmp_path / "ns.pcap"
    p.write_bytes(pcap_bytes([reference[0].data], nanos=True, times=[t]))
    [rec] = read(p)[1]
    assert rec.time == pytest.approx(t, abs=2e-7)  # a float holds ~0.2 µs at this epoch
    assert round((rec.time % 1) * 1e6) == 123457  # sub-µs digits were read, not cut to µs


@needs_editcap
@pytest.mark.parametrize("fmt", ["pcapng", "nsecpcap", "pcap"])
def test_editcap_conversions(tmp_path, reference, fmt):
    out = tmp_path / f"eth1.{fmt}"
    editcap("-F", fmt, UNDERLAY, out)
    cap, recs = read(out)
    assert cap.format == ("pcapng" if fmt == "pcapng" else "pcap")
    assert_same_records(recs, reference)


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian", "big-endian"])
def test_pcapng_several_interfaces_and_comments(tmp_path, endian):
    """Two interfaces (Ethernet and raw IP), section, interface and packet comments, either byte order."""
    _, pod = read(POD)
    raw = [r.data[14:] for r in pod]  # the same IP packets without their Ethernet header
    packets = [(i % 2, pod[i].data if i % 2 == 0 else raw[i]) for i in range(len(pod))]
    p = tmp_path / "multi.pcapng"
    p.write_bytes(pcapng_bytes([(LINKTYPE_ETHERNET, "curl/eth0"), (LINKTYPE_RAW, "worker1/cali35e3a5cb80b")], packets,
                               endian=endian, comment="section comment", times=[r.time for r in pod]))
    cap, recs = read(p)
    assert cap.format == "pcapng" and cap.warnings == []
    assert [(i.linktype, i.name) for i in cap.interfaces] == [(1, "curl/eth0"), (101, "worker1/cali35e3a5cb80b")]
    assert "section comment" in cap.comments
    assert [r.interface for r in recs] == [i % 2 for i in range(len(pod))]
    for r, ref in zip(recs, pod, strict=True):
        lt = cap.interfaces[r.interface].linktype
        assert r.time == pytest.approx(ref.time, abs=1e-6)
        assert identity_fields(lt, r.data, r.orig_len) == identity_fields(LINKTYPE_ETHERNET, ref.data, ref.orig_len)


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian", "big-endian"])
def test_pcapng_simple_packet_blocks(tmp_path, reference, endian):
    p = tmp_path / "spb.pcapng"
    p.write_bytes(pcapng_bytes([(LINKTYPE_ETHERNET, None)], [(0, r.data) for r in reference], endian=endian, simple=True))
    cap, recs = read(p)
    assert cap.warnings == []
    assert_same_records(recs, reference, times=False)
    assert {r.time for r in recs} == {0.0}  # simple packet blocks carry no timestamp


@pytest.mark.parametrize("linktype,wrap", [
    (LINKTYPE_ETHERNET, lambda eth: eth),
    (LINKTYPE_RAW, lambda eth: eth[14:]),
    (LINKTYPE_LINUX_SLL, lambda eth: sll_frame(eth[14:], src=fmt_mac(eth[6:12]))),
    (LINKTYPE_LINUX_SLL2, lambda eth: sll2_frame(eth[14:], src=fmt_mac(eth[6:12]))),
], ids=["ethernet", "raw-ip", "linux-sll", "linux-sll2"])
def test_link_types_decode_the_same_packets(tmp_path, linktype, wrap):
    """The curl pod's 12 packets as Ethernet, raw IP, Linux cooked v1 and v2: the same IP packets."""
    _, pod = read(POD)
    p = tmp_path / "lt.pcap"
    p.write_bytes(pcap_bytes([wrap(r.data) for r in pod], linktype=linktype, times=[r.time for r in pod]))
    cap, recs = read(p)
    assert cap.interfaces[0].linktype == linktype
    for r, ref in zip(recs, pod, strict=True):
        fr = decode(linktype, r.data, r.orig_len)
        assert fr.undecoded is None and not fr.truncated
        assert identity_fields(linktype, r.data, r.orig_len) == identity_fields(LINKTYPE_ETHERNET, ref.data, ref.orig_len)
        if linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
            assert fr.eth_src == ref.data[6:12] and fr.sll_dir == "out"


def test_pcapng_interfaces_named_node_slash_interface_are_points(tmp_path, capsys):
    """One pcapng holding two points (as `tracer follow` or a merged file may): both are found and
    the packet is followed from one to the other."""
    _, w1 = read(SAMPLES / "http-get" / "worker1" / "eth1.pcap")
    _, w2 = read(SAMPLES / "http-get" / "worker2" / "eth1.pcap")
    packets = sorted([(r.time, 0, r.data) for r in w1] + [(r.time, 1, r.data) for r in w2])
    p = tmp_path / "both.pcapng"
    p.write_bytes(pcapng_bytes([(LINKTYPE_ETHERNET, "worker1/eth1"), (LINKTYPE_ETHERNET, "worker2/eth1")],
                               [(i, d) for _, i, d in packets], times=[t for t, _, _ in packets]))
    d = analyze_json(capsys, str(p))
    assert [pt["id"] for pt in d["points"]] == ["worker1/eth1", "worker2/eth1"]
    syn = d["flows"][0]["packets"][0]
    assert syn["tcp_flags"] == "S"
    assert [h["point"] for h in syn["hops"]] == ["worker1/eth1", "worker2/eth1"]


def test_pcap_fcs_bits_in_the_linktype_field(tmp_path, reference):
    """The pcap link-type field's upper bits: FCS length (bits 28-31) and the P bit saying it is
    present (bit 26, 0x04000000); the link type is what libpcap's LT_LINKTYPE keeps (& 0x03FFFFFF)."""
    data = bytearray(pcap_bytes([r.data for r in reference]))
    struct.pack_into("<I", data, 20, (4 << 28) | 0x04000000 | LINKTYPE_ETHERNET)
    p = tmp_path / "fcs.pcap"
    p.write_bytes(bytes(data))
    cap, recs = read(p)
    assert cap.interfaces[0].linktype == LINKTYPE_ETHERNET
    assert len(recs) == 12
