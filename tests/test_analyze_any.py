"""`tcpdump -i any` captures: one file per node, split into one point per interface.

The sample pcaps/any-http-get is the lab's curl -> httpbin request captured as people capture
on a node (`tcpdump -i any -w <node>/any.pcap`, Linux cooked v2). Expectations come from its
path.json (the interface indexes, names and MACs the lab really had) and from tshark's reading
of the same bytes, never from tracer's own output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter

import pytest

from factories import SAMPLES, analyze_json, needs_tshark, path_doc, run_cli, tshark_lines

SCENARIO = SAMPLES / "any-http-get"
FILES = [SCENARIO / "worker1" / "any.pcap", SCENARIO / "worker2" / "any.pcap"]
# The request's way without the pods' own eth0 (not in a node's capture): what changes at each point.
CHANGES = [set(), {"mac", "ttl"}, {"encap"}, set(), {"decap"}, {"mac", "ttl"}]
TTLS = [64, 63, 63, 63, 63, 62]


def frames_per_interface() -> Counter:
    """(node, interface index) -> frames, as tshark reads the files."""
    out = Counter()
    for f in FILES:
        for line in tshark_lines(f, "-T", "fields", "-e", "sll.ifindex"):
            out[(f.parent.name, int(line))] += 1
    return out


def by_first_flags(doc: dict) -> dict[str, dict]:
    [flow] = doc["flows"]
    packets = {}
    for p in flow["packets"]:
        packets.setdefault(p["tcp_flags"], p)
    return packets


@needs_tshark
def test_each_interface_of_a_node_capture_is_the_point_path_json_names(capsys):
    doc = path_doc("any-http-get")
    names = {(p["node"], p["ifindex"]): p["id"] for p in doc["points"]}
    seen = frames_per_interface()
    assert set(seen) == set(names)  # the lab's nodes carry the request on exactly the way's interfaces
    got = analyze_json(capsys, str(SCENARIO))  # path.json is found in the directory
    assert {p["id"]: p["packets"] for p in got["points"]} == {names[k]: n for k, n in seen.items()}
    roles = {p["id"]: p["role"] for p in got["points"]}
    assert roles == {p["id"]: p["role"] for p in doc["points"]}
    assert got["warnings"] == []


def test_syn_and_synack_cross_all_six_points_in_the_ways_order(capsys):
    doc = path_doc("any-http-get")
    way = [p["id"] for p in doc["points"]]
    packets = by_first_flags(analyze_json(capsys, str(SCENARIO)))
    for flags, order in (("S", way), ("SA", way[::-1])):
        p = packets[flags]
        assert [h["point"] for h in p["hops"]] == order, flags
        assert p["missing"] == [] and p["last_seen"] == order[-1]
        assert [h["ttl"] for h in p["hops"]] == TTLS, flags
        assert [set(h["changes"]) for h in p["hops"]] == CHANGES, flags
        for hop in p["hops"]:
            if hop["point"].endswith("/eth1"):  # the whole inner frame travels inside VXLAN
                assert hop["encap"]["vni"] == doc["vni"] == 4096 and hop["encap"]["udp_dport"] == 4789
                assert hop["eth_dst"] is not None
            else:  # a cooked header keeps the sender's MAC only
                assert hop["encap"] is None and hop["eth_dst"] is None
    # The sender's MAC at each point is the one the lab's path.json gives for it.
    first = packets["S"]["hops"]
    assert first[0]["eth_src"] == doc["src"]["mac"]
    assert first[1]["eth_src"] == doc["points"][1]["mac"] == doc["tunnel"]["src_mac"]
    assert first[5]["eth_src"] == doc["points"][5]["mac"] == "ee:ee:ee:ee:ee:ee"


def test_without_names_the_points_are_if_index_and_a_warning_says_how_to_name_them(capsys):
    doc = path_doc("any-http-get")
    got = analyze_json(capsys, *map(str, FILES))  # single files: no path.json looked for
    expect = {f"{p['node']}/if{p['ifindex']}" for p in doc["points"]}
    assert {p["id"] for p in got["points"]} == expect
    assert len(got["warnings"]) == 2
    for w, node in zip(sorted(got["warnings"]), ("worker1", "worker2"), strict=True):
        assert "tcpdump -i any" in w and f"--ifname {node}/" in w and "--path-file" in w


def test_ifname_names_interfaces_and_bad_specs_are_usage_errors(capsys):
    doc = path_doc("any-http-get")
    args = [f"--ifname={p['node']}/{p['ifindex']}={p['interface']}" for p in doc["points"]]
    got = analyze_json(capsys, *map(str, FILES), *args)
    assert {p["id"] for p in got["points"]} == {p["id"] for p in doc["points"]}
    assert got["warnings"] == []
    for bad in ("worker1=eth1", "worker1/x=eth1", "worker1/3", "/3=eth1", "worker1/3=a/b"):
        code, _, err = run_cli(capsys, "analyze", str(FILES[0]), "--ifname", bad)
        assert code == 2 and "NODE/INDEX=NAME" in err, bad


def test_point_names_the_node_of_a_whole_node_capture_or_forces_one_point(capsys):
    got = analyze_json(capsys, "--point", f"nodeA={FILES[0]}", "--point", f"nodeB/any={FILES[1]}")
    assert {p["id"].split("/")[0] for p in got["points"]} == {"nodeA", "nodeB"}
    assert len(got["points"]) == 6
    got = analyze_json(capsys, "--point", f"worker1/all={FILES[0]}")
    assert [p["id"] for p in got["points"]] == ["worker1/all"]


@pytest.mark.skipif(shutil.which("editcap") is None or shutil.which("tshark") is None, reason="needs tshark")
def test_a_cooked_v2_capture_of_one_interface_stays_one_point(capsys, tmp_path):
    one = tmp_path / "eth1.pcap"
    subprocess.run(["tshark", "-r", str(FILES[0]), "-Y", "sll.ifindex == 2", "-F", "pcap", "-w", str(one)],
                   check=True, capture_output=True)
    got = analyze_json(capsys, str(one))
    assert [p["id"] for p in got["points"]] == [f"{tmp_path.name}/eth1"]
    assert got["points"][0]["packets"] == frames_per_interface()[("worker1", 2)]
    assert got["warnings"] == []


@pytest.mark.parametrize("summary", [False, True])
def test_captures_of_just_the_pcap_header_say_why_they_are_empty(capsys, tmp_path, summary):
    """tcpdump killed before it wrote its buffer leaves the 24-byte header only: when that is all
    there is, say so and how to avoid it (in either reader); one empty capture beside others is a
    point nothing passed, as in pcaps/policy-drop, and says nothing."""
    from factories import pcap_bytes
    mode = ["--summary"] if summary else []
    for name in ("eth1", "vxlan.calico"):
        (tmp_path / "worker1").mkdir(exist_ok=True)
        (tmp_path / "worker1" / f"{name}.pcap").write_bytes(pcap_bytes([]))
    assert (tmp_path / "worker1" / "eth1.pcap").stat().st_size == 24
    doc = json.loads(run_cli(capsys, "analyze", str(tmp_path), "-o", "json", *mode)[1])
    said = [w for w in doc["warnings"] if w.startswith("no packets in the captures, only their pcap headers (")]
    assert len(said) == 1 and "-U" in said[0] and str(tmp_path / "worker1" / "eth1.pcap") in said[0]
    (tmp_path / "worker1" / "vxlan.calico.pcap").write_bytes(
        (SAMPLES / "http-get" / "worker1" / "vxlan.calico.pcap").read_bytes())
    doc = json.loads(run_cli(capsys, "analyze", str(tmp_path), "-o", "json", *mode)[1])
    assert not any("pcap header" in w for w in doc["warnings"])


@pytest.mark.parametrize("summary", [False, True])
def test_a_point_named_without_its_node_is_refused_unless_the_file_is_a_whole_node(capsys, summary):
    mode = ["--summary"] if summary else []
    eth1 = SAMPLES / "http-get" / "worker1" / "eth1.pcap"
    code, out, err = run_cli(capsys, "analyze", "--point", f"eth1={eth1}", *mode)
    assert code == 2 and out == "" and f"--point eth1={eth1}: a point is NODE/INTERFACE" in err
    assert f"hint: e.g. --point worker1/eth1={eth1}" in err and "Traceback" not in err
    # NODE alone is right for a tcpdump -i any capture: one point per interface of that node
    code, out, err = run_cli(capsys, "analyze", "--point", f"worker1={SAMPLES / 'any-http-get' / 'worker1' / 'any.pcap'}",
                             "-o", "json", *mode)
    assert code == 0, err
    assert {p["node"] for p in json.loads(out)["points"]} == {"worker1"}
