"""Robustness: real public captures and broken inputs through `tracer analyze`.

Each file in ../shared/pcaps-public/ (tests/factories.PUBLIC) must decode (exit 0 and a view) or be refused with one
line and a hint (non-zero exit, no traceback); broken inputs give one clear line, a hint and the
exit code of `tracer.errors.ExitCode`.
"""

from __future__ import annotations

import os
import random

import pytest

from factories import PUBLIC, PUBLIC_FILES, SAMPLES, analyze_json, editcap, run_cli
from tracer.errors import ExitCode

# What tracer must find in each public file: (frames, tunnel type of the first flow's first hop or None).
EXPECTED = {
    "arkime-bigendian.pcap": (None, None),
    "arkime-empty.pcap": (0, None),
    "arkime-gre-erspan-vxlan-http.pcap": (7, "vxlan"),
    "pcapngtest-016-bigendian-spb-nrb.pcapng": (4, None),
    "skydive-vxlan-snaplen256.pcap": (None, "vxlan"),
    "tcpdump-bigtcp-ipv4-vxlan-ipv4.pcap": (1, "vxlan"),
    "tcpdump-geneve-gcp.pcap": (1, "geneve"),
    "tcpdump-geneve-ovs-ssh.pcap": (None, "geneve"),
    "tcpdump-gso-ipv4-vxlan-ipv4.pcap": (1, "vxlan"),
    "tcpdump-nsec-sll.pcap": (None, None),
    "zeek-gre-sample.pcap": (None, "gre"),
    "zeek-linux-sll2.pcap": (None, None),
    "zeek-pcapng-multi-interface.pcapng": (6, None),
    "zeek-trunc-hdr.pcap": (1, None),
    "zeek-vxlan4789-arp-icmp.pcap": (10, "vxlan"),
}


def assert_refused(code: int, err: str, exit_code: ExitCode, *words: str) -> None:
    """One line `tracer: ...` naming the problem, one hint line, the right exit code, no traceback."""
    assert code == exit_code, err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("tracer: ") and lines[1].startswith("  hint: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], err


def test_every_public_file_is_listed():
    assert {p.name for p in PUBLIC_FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", PUBLIC_FILES, ids=lambda p: p.name)
def test_public_file_decodes_or_is_refused(capsys, path):
    code, out, err = run_cli(capsys, "analyze", str(path), "--all-flows")
    if code != 0:
        assert_refused(code, err, ExitCode.BAD_INPUT, path.name)
        return
    assert "Traceback" not in err
    assert "capture points" in out
    d = analyze_json(capsys, str(path), "--all-flows")
    frames, tunnel = EXPECTED[path.name]
    total = sum(p["packets"] for p in d["points"])
    if frames is not None:
        assert total == frames
    else:
        assert total > 0
    if tunnel is not None:
        encaps = {h["encap"]["type"] for f in d["flows"] for p in f["packets"] for h in p["hops"] if h["encap"]}
        assert tunnel in encaps
        assert d["points"][0]["role"] == "underlay"  # most frames carry a tunnel: an underlay NIC


def test_public_files_together(capsys):
    """All of them in one run: different link types and formats side by side."""
    code, out, err = run_cli(capsys, "analyze", *map(str, PUBLIC_FILES), "--all-flows", "--summary")
    assert code == 0, err
    assert "Traceback" not in err


def test_corrupt_file(tmp_path, capsys):
    p = tmp_path / "random.pcap"
    p.write_bytes(random.Random(7).randbytes(4000))
    code, _, err = run_cli(capsys, "analyze", str(p))
    assert_refused(code, err, ExitCode.BAD_INPUT, "random.pcap", "not a pcap or pcapng file")


def test_empty_file(tmp_path, capsys):
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    code, _, err = run_cli(capsys, "analyze", str(p))
    assert_refused(code, err, ExitCode.BAD_INPUT, "empty.pcap", "empty")


def test_nonexistent_path(tmp_path, capsys):
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "nope.pcap"))
    assert_refused(code, err, ExitCode.BAD_INPUT, "nope.pcap", "no such file")


def test_directory_without_captures(tmp_path, capsys):
    (tmp_path / "worker1").mkdir()
    (tmp_path / "worker1" / "notes.txt").write_text("no captures here")
    code, _, err = run_cli(capsys, "analyze", str(tmp_path))
    assert_refused(code, err, ExitCode.BAD_INPUT, "no capture files")


def test_no_arguments(capsys):
    code, _, err = run_cli(capsys, "analyze")
    assert_refused(code, err, ExitCode.USAGE, "no captures given")


def test_bad_point_spec(capsys):
    code, _, err = run_cli(capsys, "analyze", "--point", "worker1-eth1.pcap")
    assert code != 0 and "Traceback" not in err
    assert err.startswith("tracer: ") and "NAME=FILE" in err


@pytest.mark.parametrize("cut", ["record body", "record header"])
def test_truncated_pcap_keeps_the_complete_records(tmp_path, capsys, cut):
    """A capture cut in the middle of a record: a warning, and every complete record analyzed."""
    src = SAMPLES / "http-get" / "worker1" / "eth1.pcap"
    data = src.read_bytes()
    # offsets of the records: 24-byte file header, then 16-byte record headers
    offsets, pos = [], 24
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + int.from_bytes(data[pos + 8:pos + 12], "little")
    sixth = offsets[5]
    end = sixth + 16 + 30 if cut == "record body" else sixth + 7
    p = tmp_path / "worker1" / "eth1.pcap"
    p.parent.mkdir()
    p.write_bytes(data[:end])
    d = analyze_json(capsys, str(p))
    assert d["points"][0]["packets"] == 5
    [warning] = d["warnings"]
    assert "eth1.pcap" in warning and "cut short" in warning and "packet" in warning
    code, out, err = run_cli(capsys, "analyze", str(p))
    assert code == 0 and "warning:" in out and "cut short" in out


def test_truncated_pcapng_keeps_the_complete_blocks(tmp_path, capsys):
    src = SAMPLES / "http-get" / "worker1" / "eth1.pcap"
    p = tmp_path / "worker1" / "eth1.pcapng"
    p.parent.mkdir()
    editcap("-F", "pcapng", src, p)
    data = p.read_bytes()
    p.write_bytes(data[:len(data) - 40])  # into the last enhanced packet block
    d = analyze_json(capsys, str(p))
    assert d["points"][0]["packets"] == 11
    assert any("cut short" in w for w in d["warnings"])


def test_public_dir_is_read_in_place():
    """The public captures are read from the shared directory, never copied into the project."""
    assert PUBLIC.is_dir()
    here = os.path.dirname(__file__)
    assert not any(f.endswith((".pcap", ".pcapng")) for f in os.listdir(here))
