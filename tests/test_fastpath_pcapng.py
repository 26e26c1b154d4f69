"""The summary fast path on pcapng files: what the general reader finds, block for block.

A pcapng file of one Ethernet interface is read by tracer.capture.fastpath's fast reader from its first
packet block on. Whatever that reader does not take (another section, another interface, a
simple or obsolete packet block, a corrupt or cut-short block) it leaves to pcapio's general
reader from that block on (pcapio.resume_records). Both ways must give the same sightings,
statistics, warnings and summary document as the general reader alone: on tshark's own pcapng
(editcap) of every sample, on the public pcapng files, and on generated block sequences with
every kind of block, in both byte orders, cut into chunks of every size.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import PUBLIC_FILES, SAMPLES, SCENARIOS, _block, _opt, editcap, needs_editcap, run_cli, sll_frame
from test_fastpath import SEEDS, fast, same, summary
from tracer.capture import fastpath
from tracer.capture.pcapio import open_capture, pcapng_head


def _without_files(doc: dict, base: Path) -> dict:
    """The document without where its files are and which format they have."""
    for p in doc["points"]:
        p.pop("files", None)
    doc["warnings"] = [w.replace(str(base), "").replace(".pcapng", "").replace(".pcap", "") for w in doc["warnings"]]
    return doc


# --- real files ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples_as_pcapng(tmp_path_factory) -> Path:
    """Every sample scenario with its pcap files rewritten by editcap as pcapng (tshark's writer)."""
    out = tmp_path_factory.mktemp("ng")
    for scenario in SCENARIOS:
        for f in sorted((SAMPLES / scenario).glob("*/*.pcap")):
            dst = out / scenario / f.parent.name / (f.stem + ".pcapng")
            dst.parent.mkdir(parents=True, exist_ok=True)
            editcap("-F", "pcapng", f, dst)
    return out


@needs_editcap
def test_every_sample_as_pcapng_gives_the_same_sightings(samples_as_pcapng):
    files = sorted(samples_as_pcapng.rglob("*.pcapng"))
    fast_ones = []
    for f in files:
        cap, records = open_capture(f)
        records.close()
        if pcapng_head(cap):
            assert same(f).resume is None, f  # nothing in tshark's files for the general reader
            fast_ones.append(f)
    # all but Linux cooked frames (any-http-get) and files without a packet (vxlan-drop's node 2)
    cooked = list((samples_as_pcapng / "any-http-get").rglob("*.pcapng"))
    empty = [f for f in files if not any(True for _ in open_capture(f)[1])]
    assert sorted(fast_ones) == sorted(set(files) - set(cooked) - set(empty)) and len(fast_ones) >= 20


@needs_editcap
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_summary_of_a_pcapng_set_is_the_pcap_sets(samples_as_pcapng, scenario):
    ng = summary([str(samples_as_pcapng / scenario)], True)
    assert ng == summary([str(samples_as_pcapng / scenario)], False)
    assert _without_files(ng, samples_as_pcapng) == _without_files(summary([str(SAMPLES / scenario)], True), SAMPLES)


@needs_editcap
@pytest.mark.parametrize("chunk", [1 << 20, 2048])
def test_workers_read_pcapng_as_this_process_does(capsys, monkeypatch, forks, samples_as_pcapng, tmp_path, chunk):
    import shutil
    monkeypatch.setattr(fastpath, "CHUNK", chunk)  # (blocks cut across chunks; the forks read with it too)
    d = shutil.copytree(samples_as_pcapng / "http-get", tmp_path / "http-get")
    # worker1's NIC capture in two sections (as `cat` of two files of one capture gives), the
    # last cut short: its worker stops at the second, and this process reads on from there (and
    # warns of the cut).
    eth1 = d / "worker1" / "eth1.pcapng"
    n = sum(1 for _ in open_capture(eth1)[1])
    editcap("-r", eth1, tmp_path / "a.pcapng", f"1-{n // 2}")
    editcap("-r", eth1, tmp_path / "b.pcapng", f"{n // 2 + 1}-{n}")
    eth1.write_bytes((tmp_path / "a.pcapng").read_bytes() + (tmp_path / "b.pcapng").read_bytes()[:-10])
    docs = []
    for jobs in ("1", "8"):
        code, out, err = run_cli(capsys, "analyze", str(d), "--summary", "-o", "json", "--jobs", jobs)
        assert code == 0, err
        docs.append(out)
    assert len(forks) == 7 and str(eth1) in forks and docs[0] == docs[1]
    assert f"{eth1}: file cut short in a block after " in docs[1]
    assert json.loads(docs[1]) == summary([str(d)], False)


def test_the_public_pcapng_files_are_left_to_the_general_reader():
    # Neither is a capture of one Ethernet interface whose first packet is an enhanced packet
    # block (one has several interfaces, the other begins with a simple packet block): the head
    # check must send both to the general reader, which then reads them as it always did.
    ng = {p.name: p for p in PUBLIC_FILES if p.suffix == ".pcapng"}
    if not ng:
        pytest.skip("../shared/pcaps-public is not here")
    assert sorted(ng) == ["pcapngtest-016-bigendian-spb-nrb.pcapng", "zeek-pcapng-multi-interface.pcapng"]
    for p in ng.values():
        cap, records = open_capture(p)
        records.close()
        assert not pcapng_head(cap), p.name
        assert summary([str(p)], True) == summary([str(p)], False), p.name


# --- generated block sequences ----------------------------------------------------------------

def shb(e: str) -> bytes:
    return _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(e, 1, b"section") + _opt(e, 0, b""))


def idb(e: str, linktype: int = 1, name: str | None = None, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    opts = _opt(e, 2, name.encode()) if name else b""
    if tsresol is not None:
        opts += _opt(e, 9, bytes([tsresol]))
    if tsoffset:
        opts += _opt(e, 14, struct.pack(e + "q", tsoffset))
    return _block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + opts + (_opt(e, 0, b"") if opts else b""))


def epb(e: str, ifid: int, ticks: int, frame: bytes, comment: bool = False) -> bytes:
    body = struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame
    body += b"\0" * (-len(body) % 4)
    if comment:
        body += _opt(e, 1, b"a packet comment") + _opt(e, 0, b"")
    return _block(e, 6, body)


def frame(seed: int, n: int) -> bytes:
    """A seed frame made a packet of its own (its IP ID)."""
    data = bytearray(SEEDS[seed % len(SEEDS)])
    at = 68 if seed % len(SEEDS) in (0, 3) else 18  # (the inner IP ID of the VXLAN ones)
    data[at:at + 2] = struct.pack("!H", n & 0xFFFF)
    return bytes(data)


BLOCKS = st.sampled_from(["epb", "epb", "epb", "epb-comment", "epb-last", "epb-late", "epb-bad-ifid", "epb-cut", "isb", "nrb", "custom",
                          "spb", "opb", "shb", "shb-other-order", "idb", "idb-named", "idb-sll", "tiny", "corrupt"])


TAKEN = {"epb", "epb-comment", "isb", "nrb", "custom", "tiny"}
"""What the fast reader reads itself (the other kinds end it)."""


def build(kinds: list[str], e: str, tsresol: int | None, tail: int) -> bytes:
    """A file of one Ethernet interface, then the given blocks, then `tail` bytes cut off."""
    out = [shb(e), idb(e, tsresol=tsresol, tsoffset=7 if tsresol == 9 else 0)]
    ticks = 1_700_000_000 * (10 ** 9 if tsresol == 9 else 10 ** 6)
    ifaces = 1
    for n, k in enumerate(kinds):
        ticks += 1234567
        f = frame(n, n)
        if k == "epb-late":
            out.append(epb(e, 0, ticks - 5_000_000, f))  # back in time
        elif k == "epb-last":
            out.append(epb(e, ifaces - 1, ticks, f))  # the interface described last
        elif k in ("epb", "epb-comment"):
            out.append(epb(e, 0, ticks, f, k == "epb-comment"))
        elif k == "epb-bad-ifid":
            out.append(epb(e, ifaces, ticks, f))  # an interface not described
        elif k == "epb-cut":
            out.append(epb(e, ifaces - 1, ticks, f[:30]))
        elif k == "isb":
            out.append(_block(e, 5, struct.pack(e + "III", 0, 0, 0) + _opt(e, 0, b"")))
        elif k == "nrb":
            out.append(_block(e, 4, struct.pack(e + "HH", 1, 8) + bytes([10, 0, 0, 1]) + b"host" + struct.pack(e + "HH", 0, 0)))
        elif k == "custom":
            out.append(_block(e, 0x40000BAD, struct.pack(e + "I", 32473) + b"custom data!"))
        elif k == "spb":
            out.append(_block(e, 3, struct.pack(e + "I", len(f)) + f))
        elif k == "opb":
            out.append(_block(e, 2, struct.pack(e + "HHIIII", 0, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(f), len(f)) + f))
        elif k in ("shb", "shb-other-order"):
            e = e if k == "shb" else {"<": ">", ">": "<"}[e]
            out += [shb(e), idb(e)]
            ifaces = 1
        elif k.startswith("idb"):
            out.append(idb(e, 113 if k == "idb-sll" else 1, "node/other" if k == "idb-named" else None))
            ifaces += 1
            if k == "idb-sll":
                out.append(epb(e, ifaces - 1, ticks, sll_frame(f[14:])))
        elif k == "tiny":
            out.append(_block(e, 0x00000BAD, b""))  # 12 bytes: smaller than a packet block's header
        elif k == "corrupt":
            out.append(struct.pack(e + "II", 6, 13) + b"\0" * 8)  # a length that is not a multiple of 4
    data = b"".join(out)
    return data[:len(data) - tail] if tail else data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(BLOCKS, max_size=14), e=st.sampled_from("<>"), tsresol=st.sampled_from([None, 9, 0x80 | 20]),
       tail=st.sampled_from([0, 0, 1, 4, 13, 40]), chunk=st.sampled_from([64, 100, 256, 1 << 20]),
       lead=st.sampled_from([["epb"], ["epb"], []]))
def test_any_block_sequence_reads_as_the_general_reader_reads_it(tmp_path_factory, monkeypatch, kinds, e, tsresol,
                                                                 tail, chunk, lead):
    path = tmp_path_factory.mktemp("blocks") / "node" / "eth0.pcapng"
    path.parent.mkdir()
    path.write_bytes(build(lead + kinds, e, tsresol, tail))  # (mostly a first packet: the fast reader's file)
    monkeypatch.setattr(fastpath, "CHUNK", chunk)
    cap, records = open_capture(path)
    records.close()
    if pcapng_head(cap):  # (not if the first packet block is not a sound one of the interface)
        resumed = same(path).resume is not None
        # the fast reader leaves nothing it can take to the general reader, wherever chunks end
        assert not resumed or tail or not TAKEN.issuperset(kinds)
    assert summary([str(path)], True) == summary([str(path)], False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(TAKEN)), min_size=5, max_size=40), e=st.sampled_from("<>"),
       chunk=st.integers(40, 400))
def test_blocks_the_fast_reader_takes_are_all_its_own_wherever_chunks_end(tmp_path_factory, monkeypatch, kinds, e,
                                                                           chunk):
    path = tmp_path_factory.mktemp("taken") / "node" / "eth0.pcapng"
    path.parent.mkdir()
    path.write_bytes(build(["epb", *kinds], e, None, 0))
    monkeypatch.setattr(fastpath, "CHUNK", chunk)
    assert same(path).resume is None


def test_the_generator_makes_what_the_fast_reader_leaves_and_what_it_takes(tmp_path, monkeypatch):
    # (that the test above exercises both ways: a file it reads to the end, one it leaves mid-way)
    monkeypatch.setattr(fastpath, "CHUNK", 100)
    for kinds, resumed in ((["epb", "isb", "nrb", "custom", "epb-comment", "tiny", "epb"], False),
                           (["nrb", "custom", "epb", "epb"], False),  # (blocks without packets first)
                           (["epb", "epb", "idb-named", "epb"], True), (["epb", "shb-other-order", "epb"], True)):
        p = tmp_path / "n" / "x.pcapng"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(build(kinds, "<", None, 0))
        cap = same(p)
        assert (cap.resume is not None) == resumed, kinds
    p.write_bytes(build(["epb", "epb"], ">", 9, 13))  # cut short in the last block
    cap = same(p)
    assert cap.resume is not None and fast(p)[2] == ["file cut short in a block after 1 packets"]


def test_a_second_interface_named_as_a_point_is_that_point(tmp_path):
    p = tmp_path / "n1" / "eth0.pcapng"
    p.parent.mkdir()
    p.write_bytes(build(["epb", "epb", "idb-named", "epb-last", "epb", "epb-bad-ifid"], "<", None, 0))
    doc = summary([str(p)], True)
    assert doc == summary([str(p)], False)
    assert [(pt["id"], pt["packets"]) for pt in doc["points"]] == [("n1/eth0", 3), ("node/other", 1)]
    assert any("unknown interface 2" in w for w in doc["warnings"])


def test_a_file_whose_first_packet_block_is_not_the_fast_readers_gets_the_general_readers_points(tmp_path):
    # The first packet for an interface not described (skipped), then a second interface: the
    # general reader names the points after the interfaces, as there are two when its first
    # packet comes (a fast reader that took the file would have made it one point).
    t, e = 1_700_000_000 * 10 ** 6, "<"
    for first in (epb(e, 5, t, frame(1, 1)), epb(e, 0, t, frame(1, 1))[:20] + struct.pack(e + "I", 999) +
                  epb(e, 0, t, frame(1, 1))[24:],  # (a captured length past the block's end)
                  _block(e, 2, b"\0" * 4)):  # (an obsolete packet block too short to hold a packet)
        p = tmp_path / "n1" / "cap.pcapng"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(shb(e) + idb(e, name="eth0") + first + idb(e, name="eth1") + epb(e, 0, t + 10, frame(1, 2))
                      + epb(e, 1, t + 20, frame(2, 3)))
        cap, records = open_capture(p)
        records.close()
        assert not pcapng_head(cap)
        doc = summary([str(p)], True)
        assert doc == summary([str(p)], False)
        assert sorted((pt["id"], pt["packets"]) for pt in doc["points"]) == [("n1/eth0", 1), ("n1/eth1", 1)]


def test_no_file_is_left_open(tmp_path):
    import gc
    import warnings
    p = tmp_path / "n" / "x.pcapng"
    p.parent.mkdir()
    p.write_bytes(build(["epb", "epb", "idb-named", "epb-last"], "<", None, 0))  # (fast, then the general reader)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for fast_path in (True, False):
            summary([str(p), str(SAMPLES / "http-get")], fast_path)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
