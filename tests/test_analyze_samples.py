"""`tracer analyze` on the lab's sample captures, checked against the lab's real state in path.json.

Every expectation is derived from path.json (the MACs, IPs, VNI and port the lab's namespaces
really had when the packets were captured), never from tracer's own output.
"""

from __future__ import annotations

import pytest

from factories import SAMPLES, analyze_json, needs_tshark, path_doc, run_cli, tshark_lines

TTLS = [64, 64, 63, 63, 63, 63, 62, 62]
SERVICE = "10.152.183.50"


def request_way(doc: dict) -> list[str]:
    """curl/eth0, the six points of path.json, httpbin/eth0."""
    return [f"{doc['src']['name']}/eth0"] + [p["id"] for p in doc["points"]] + [f"{doc['dst']['name']}/eth0"]


# The way is symmetric: each direction leaves a pod, is routed into the tunnel, encapsulated,
# crosses the underlay, decapsulated and routed into the other pod.
WAY_CHANGES = [set(), set(), {"mac", "ttl"}, {"encap"}, set(), {"decap"}, {"mac", "ttl"}, set()]


def with_ttls_and_changes(hops: list[dict]) -> list[dict]:
    for h, ttl, ch in zip(hops, TTLS, WAY_CHANGES, strict=True):
        h["ttl"], h["changes"] = ttl, ch
    return hops


def expected_request_hops(doc: dict) -> list[dict]:
    """Per point of the request's way: inner MACs, outer MACs (or None), direction, TTL, changes."""
    src, dst, tun = doc["src"], doc["dst"], doc["tunnel"]
    hops = [{"eth": (src["mac"], src["gateway_mac"]), "outer": None, "direction": "out"}]
    for p in doc["points"]:
        if p["role"] == "underlay":
            hops.append({"eth": (tun["src_mac"], tun["dst_mac"]), "outer": (p["eth_src"], p["eth_dst"])})
        else:
            hops.append({"eth": (p["eth_src"], p["eth_dst"]), "outer": None})
        hops[-1]["direction"] = {"ingress": "in", "egress": "out"}[p["direction"]]
    hops.append({"eth": (dst["host_veth_mac"], dst["mac"]), "outer": None, "direction": "in"})
    return with_ttls_and_changes(hops)


def expected_response_hops(doc: dict) -> list[dict]:
    """The mirror way: the same points backwards, every MAC pair swapped, in/out swapped."""
    hops = []
    for h in reversed(expected_request_hops(doc)):
        hops.append({"eth": h["eth"][::-1], "outer": h["outer"] and h["outer"][::-1],
                     "direction": {"in": "out", "out": "in"}[h["direction"]]})
    return with_ttls_and_changes(hops)


def assert_hops(packet: dict, way: list[str], expected: list[dict], doc: dict, *, forward: bool, nat_changes=None):
    tun = doc["tunnel"]
    assert [h["point"] for h in packet["hops"]] == way, packet["summary"]
    assert packet["missing"] == [] and packet["last_seen"] == way[-1]
    assert [h["ttl"] for h in packet["hops"]] == TTLS
    for i, (hop, exp) in enumerate(zip(packet["hops"], expected, strict=True)):
        where = f"{packet['summary']} hop {i + 1} {hop['point']}"
        assert (hop["eth_src"], hop["eth_dst"]) == exp["eth"], where
        assert hop["direction"] == exp["direction"], where
        assert set(hop["changes"]) == exp["changes"] | (nat_changes or {}).get(i, set()), where
        if exp["outer"] is None:
            assert hop["encap"] is None, where
            continue
        e = hop["encap"]
        nodes = (tun["src_node_ip"], tun["dst_node_ip"]) if forward else (tun["dst_node_ip"], tun["src_node_ip"])
        assert e["type"] == "vxlan" and e["vni"] == doc["vni"] == 4096, where
        assert e["udp_dport"] == doc["udp_port"] == 4789, where
        assert 32768 <= e["udp_sport"] <= 60999, where  # Linux hashes the flow into its ephemeral range
        assert (e["outer_ip_src"], e["outer_ip_dst"]) == nodes, where
        assert (e["outer_eth_src"], e["outer_eth_dst"]) == exp["outer"], where
        assert e["bytes_added"] == 50, where


@pytest.fixture
def http_get(capsys):
    return analyze_json(capsys, str(SAMPLES / "http-get")), path_doc("http-get")


def test_http_get_every_packet_follows_the_lab_state(http_get):
    d, doc = http_get
    way = request_way(doc)
    [flow] = d["flows"]
    assert flow["client"].startswith(doc["src"]["ip"] + ":")
    assert flow["server"] == f"{doc['dst']['ip']}:80"
    assert flow["protocol"] == "tcp" and flow["nat"] is None and flow["http"] is True
    packets = flow["packets"]
    assert len(packets) == 12
    assert [p["tcp_flags"] for p in packets[:3]] == ["S", "SA", "A"]
    for p in packets:
        if p["direction"] == "request":
            assert_hops(p, way, expected_request_hops(doc), doc, forward=True)
            assert {(h["ip_src"], h["ip_dst"]) for h in p["hops"]} == {(doc["src"]["ip"], doc["dst"]["ip"])}
        else:
            assert_hops(p, way[::-1], expected_response_hops(doc), doc, forward=False)
            assert {(h["ip_src"], h["ip_dst"]) for h in p["hops"]} == {(doc["dst"]["ip"], doc["src"]["ip"])}
    # curl sends 7 of them (SYN, ACK, GET, 2 ACKs, FIN, last ACK), httpbin 5 (see tshark -r curl/eth0.pcap)
    assert sum(p["direction"] == "request" for p in packets) == 7
    assert any(p["payload_bytes"] > 0 and p["tcp_flags"] == "PA" for p in packets)


def test_http_get_points_and_roles(http_get):
    d, doc = http_get
    assert [p["id"] for p in d["points"]] == request_way(doc)
    roles = {p["id"]: p["role"] for p in d["points"]}
    for p in doc["points"]:
        assert roles[p["id"]] == p["role"]
    for pid, role in roles.items():
        iface = pid.split("/")[1]
        if iface.startswith("cali") or iface == "eth0":
            assert role == "pod-veth", pid
        elif iface == "vxlan.calico":
            assert role == "tunnel", pid
        else:
            assert (iface, role) == ("eth1", "underlay")
    assert all(p["packets"] == 12 and p["undecoded"] == 0 for p in d["points"])


def test_json_contract_keys(http_get):
    d, _ = http_get
    assert d["schema"] == "tracer.trace/v1"
    assert {"schema", "points", "clock_offsets", "flows"} <= d.keys()
    assert isinstance(d["clock_offsets"], dict)
    for p in d["points"]:
        assert {"id", "node", "interface", "role", "packets"} <= p.keys()
        assert p["id"] == f"{p['node']}/{p['interface']}"
    for f in d["flows"]:
        assert {"client", "server", "protocol", "nat", "packets"} <= f.keys()
        for pk in f["packets"]:
            assert {"direction", "tcp_flags", "ip_id", "payload_bytes", "hops", "last_seen", "missing"} <= pk.keys()
            for h in pk["hops"]:
                assert {"point", "time", "eth_src", "eth_dst", "ip_src", "ip_dst", "ttl", "encap"} <= h.keys()
                assert isinstance(h["time"], float) and h["time"] > 1e9


def test_vxlan_drop_stops_after_worker2_nic(capsys):
    doc = path_doc("vxlan-drop")
    d = analyze_json(capsys, str(SAMPLES / "vxlan-drop"))
    way = request_way(doc)
    [flow] = d["flows"]
    packets = flow["packets"]
    assert len(packets) == 2  # the SYN and its retransmission; nothing came back
    for p in packets:
        assert p["direction"] == "request" and p["tcp_flags"] == "S"
        assert [h["point"] for h in p["hops"]] == way[:5]
        assert [h["ttl"] for h in p["hops"]] == TTLS[:5]
        assert p["last_seen"] == "worker2/eth1"
        assert p["missing"] == way[5:]
        assert "worker2/vxlan.calico" in p["missing"] and doc["dst"]["host_veth"] in p["missing"][1]
        for hop, exp in zip(p["hops"], expected_request_hops(doc)):
            assert (hop["eth_src"], hop["eth_dst"]) == exp["eth"]
        # what to look at: taken in on the NIC, never on the tunnel device (record.py drops UDP 4789 there)
        assert p["hint"].startswith("worker2 took it in on eth1 but vxlan.calico never had it: look for a rule "
                                    "dropping the tunnel's UDP port on worker2")
    assert {p["id"]: p["packets"] for p in d["points"]}["worker2/vxlan.calico"] == 0
    text = run_cli(capsys, "analyze", str(SAMPLES / "vxlan-drop"))[1]
    assert "no answer: SYN sent 2 times, no SYN-ACK seen" in text.split("summary: ", 1)[1]


def test_policy_drop_stops_after_the_clients_veth(capsys):
    # An egress policy of pod curl (iptables FORWARD DROP on worker1, as Calico enforces it): the
    # SYNs came out of the pod into worker1 and went no further.
    doc = path_doc("policy-drop")
    d = analyze_json(capsys, str(SAMPLES / "policy-drop"))
    way = request_way(doc)
    [flow] = d["flows"]
    assert [p["tcp_flags"] for p in flow["packets"]] == ["S", "S"]
    for p in flow["packets"]:
        assert [h["point"] for h in p["hops"]] == way[:2] and way[1] == f"worker1/{doc['src']['host_veth']}"
        assert [h["ttl"] for h in p["hops"]] == TTLS[:2]
        assert [(h["eth_src"], h["eth_dst"]) for h in p["hops"]] == [e["eth"] for e in expected_request_hops(doc)[:2]]
        assert p["last_seen"] == way[1] and p["missing"] == way[2:]
        assert p["hint"].startswith(f"worker1 got it from the pod on {doc['src']['host_veth']} but did not send it "
                                    "on: look for a policy drop")
    assert [p["retransmission"] for p in flow["packets"]] == [False, True]


def test_a_drop_shows_without_path_json_from_the_points_roles(capsys, tmp_path):
    # vxlan-drop without its path.json: the rest of worker2's way in after its NIC (the pod
    # beyond, on a point of its own name, is for path.json to place)
    import shutil
    d = shutil.copytree(SAMPLES / "vxlan-drop", tmp_path / "vxlan-drop", ignore=shutil.ignore_patterns("path.json"))
    way = request_way(path_doc("vxlan-drop"))
    doc = analyze_json(capsys, str(d))
    for p in doc["flows"][0]["packets"]:
        assert [h["point"] for h in p["hops"]] == way[:5]
        assert p["last_seen"] == way[4] and p["missing"] == way[5:7]
    code, out, err = run_cli(capsys, "analyze", str(d), "--view", "hops")
    assert code == 0 and f"stopped after {way[4]}: not seen at {', '.join(way[5:7])}" in out
    code, out, err = run_cli(capsys, "analyze", str(d))  # the grid: a note under it
    assert code == 0 and f"packets 1, 2: ✗ stopped after {way[4]}: not seen at {way[5]} nor after" in out


def test_a_node_s_way_out_is_not_taken_for_a_way_in(capsys, tmp_path):
    # Only the client node captured (as people often do): two pods of worker1 talk to httpbin on
    # another node. Each flow went out through the tunnel and the NIC; the other pod's veth, which
    # also carried httpbin's address, is no point of its way.
    from factories import CURL_MAC, eth, ipv4, pcap_bytes, tcp, udp, vxlan
    httpbin, t = "172.18.104.14", 1_700_000_000.0
    pods = {"cali35e3a5cb80b": ("172.18.166.139", CURL_MAC, 40000),
            "cali1111aaaa222": ("172.18.166.140", "0a:58:ac:12:a6:8c", 41000)}
    vx = ("66:ca:11:c0:00:01", "66:ca:11:c0:00:02")
    nic = ("52:54:00:00:56:0b", "52:54:00:00:56:0c")
    frames: dict[str, list[tuple[float, bytes]]] = {}

    def add(point: str, when: float, frame: bytes) -> None:
        frames.setdefault(point, []).append((when, frame))

    for n, (veth, (ip, mac, port)) in enumerate(pods.items()):
        t0 = t + n
        syn = lambda ttl: ipv4(ip, httpbin, 6, tcp(port, 80, flags=0x02, seq=1000), ttl=ttl, ip_id=10 * n)
        synack = lambda ttl: ipv4(httpbin, ip, 6, tcp(80, port, flags=0x12, seq=5000, ack=1001), ttl=ttl, ip_id=10 * n + 1)
        # out: veth -> vxlan.calico -> eth1; back: eth1 -> vxlan.calico -> veth
        add(veth, t0, eth(mac, "ee:ee:ee:ee:ee:ee", 0x0800, syn(64)))
        add("vxlan.calico", t0 + 0.001, eth(vx[0], vx[1], 0x0800, syn(63)))
        add("eth1", t0 + 0.002, eth(nic[0], nic[1], 0x0800, ipv4("192.168.56.11", "192.168.56.12", 17,
                                                             udp(50000 + n, 4789, vxlan(4096, eth(vx[0], vx[1], 0x0800, syn(63)))))))
        add("eth1", t0 + 0.010, eth(nic[1], nic[0], 0x0800, ipv4("192.168.56.12", "192.168.56.11", 17,
                                                              udp(50000 + n, 4789, vxlan(4096, eth(vx[1], vx[0], 0x0800, synack(63)))))))
        add("vxlan.calico", t0 + 0.011, eth(vx[1], vx[0], 0x0800, synack(63)))
        add(veth, t0 + 0.012, eth("ee:ee:ee:ee:ee:ee", mac, 0x0800, synack(62)))
    (tmp_path / "worker1").mkdir()
    for point, fs in frames.items():
        (tmp_path / "worker1" / f"{point}.pcap").write_bytes(pcap_bytes([f for _, f in fs], times=[w for w, _ in fs]))
    doc = analyze_json(capsys, str(tmp_path))
    assert len(doc["flows"]) == 2
    for f in doc["flows"]:
        assert [len(p["hops"]) for p in f["packets"]] == [3, 3]
        assert all(p["missing"] == [] for p in f["packets"]), f["client"]


@pytest.mark.parametrize("scenario", ["http-get", "clusterip-dnat", "any-http-get"])
def test_without_path_json_nothing_is_said_to_stop_that_did_not(capsys, tmp_path, scenario):
    import shutil
    d = shutil.copytree(SAMPLES / scenario, tmp_path / scenario, ignore=shutil.ignore_patterns("path.json"))
    doc = analyze_json(capsys, str(d))
    assert doc["flows"] and all(p["missing"] == [] for f in doc["flows"] for p in f["packets"])


def test_clusterip_dnat(capsys):
    doc = path_doc("clusterip-dnat")
    d = analyze_json(capsys, str(SAMPLES / "clusterip-dnat"))
    [flow] = d["flows"]
    assert flow["nat"]["kind"] == "dnat"
    assert flow["nat"]["original"] == f"{SERVICE}:80"
    assert flow["nat"]["translated"] == f"{doc['dst']['ip']}:80"
    way = request_way(doc)
    after_cali = way[2]  # the first hop after worker1's cali: kube-proxy's PREROUTING DNAT
    assert flow["nat"]["point"] == after_cali == "worker1/vxlan.calico"
    # ... and it happened between the cali veth and there: kube-proxy, as the packet came in from the pod
    assert flow["nat"]["previous_point"] == way[1] == "worker1/cali35e3a5cb80b"
    text = run_cli(capsys, "analyze", str(SAMPLES / "clusterip-dnat"))[1]
    assert (f"  DNAT {SERVICE}:80 -> {doc['dst']['ip']}:80 (kube-proxy, worker1: cali35e3a5cb80b -> vxlan.calico)"
            in text)
    assert f"DNAT {SERVICE}:80 -> {doc['dst']['ip']}:80 on worker1" in text.split("summary: ", 1)[1]
    for p in flow["packets"]:
        if p["direction"] == "request":
            # the same hops as pod to pod, plus the DNAT at hop 3
            assert_hops(p, way, expected_request_hops(doc), doc, forward=True, nat_changes={2: {"dnat"}})
            assert [h["ip_dst"] for h in p["hops"]] == [SERVICE] * 2 + [doc["dst"]["ip"]] * 6
            assert {h["ip_src"] for h in p["hops"]} == {doc["src"]["ip"]}
        else:
            # the reverse: conntrack puts the service address back as the source at worker1's cali
            assert_hops(p, way[::-1], expected_response_hops(doc), doc, forward=False, nat_changes={6: {"snat"}})
            assert [h["ip_src"] for h in p["hops"]] == [doc["dst"]["ip"]] * 6 + [SERVICE] * 2
            assert {h["ip_dst"] for h in p["hops"]} == {doc["src"]["ip"]}


@pytest.mark.parametrize("scenario,reached,stopped", [
    ("http-get", 12, {}),
    ("vxlan-drop", 0, {"worker2/eth1": 2}),
    ("policy-drop", 0, {"worker1/cali35e3a5cb80b": 2}),
    ("clusterip-dnat", 12, {}),
])
def test_summary_json(capsys, scenario, reached, stopped):
    d = analyze_json(capsys, str(SAMPLES / scenario), "--summary")
    assert d["schema"] == "tracer.trace/v1"
    # the totals and the warnings before the flows (the first bytes of a big document tell them)
    assert list(d)[-3:] == ["summary", "warnings", "flows"]
    assert all("packets" not in f for f in d["flows"])
    assert d["summary"]["reached_end"] == reached
    assert d["flows"][0]["summary"]["stopped"] == stopped
    segs = {(s["src"], s["dst"]): s for s in d["summary"]["segments"]}
    way = request_way(path_doc(scenario))
    if scenario in ("vxlan-drop", "policy-drop"):
        last = next(iter(stopped))
        assert segs[(last, way[way.index(last) + 1])]["lost"] == 2
        assert all(s["lost"] == 0 for k, s in segs.items() if k[0] != last)
    else:
        for a, b in zip(way, way[1:]):
            assert segs[(a, b)]["packets"] == 7 and segs[(a, b)]["lost"] == 0
            assert segs[(b, a)]["packets"] == 5 and segs[(b, a)]["lost"] == 0


@needs_tshark
@pytest.mark.parametrize("scenario", ["http-get", "vxlan-drop", "policy-drop", "clusterip-dnat"])
def test_retransmissions_are_those_tshark_finds(capsys, scenario):
    """tshark's TCP analysis of the client pod's own capture is the independent view."""
    lines = tshark_lines(SAMPLES / scenario / "curl" / "eth0.pcap", "-Y", "tcp.analysis.retransmission",
                         "-T", "fields", "-e", "ip.id")
    theirs = sorted(int(x, 16) for x in lines)
    d = analyze_json(capsys, str(SAMPLES / scenario))
    packets = [p for f in d["flows"] for p in f["packets"]]
    ours = sorted(p["ip_id"] for p in packets if p["retransmission"])
    assert ours == theirs
    assert not any("retransmission" in p["summary"] for p in packets)  # (the summary's words as they were)
    # (the drops' second SYN; the others have none, which the synthetic cases of
    # tests/test_flow_selection.py make up for)
    assert len(ours) == (1 if scenario in ("vxlan-drop", "policy-drop") else 0)


def test_a_first_hop_is_as_the_pod_sent_it_only_with_the_ttl_it_was_sent_with(capsys):
    """httpbin's veth captured alone: the SYN (TTL 62, from the other node) was not sent there;
    the SYN-ACK (TTL 64) is httpbin's own, as it sent it."""
    veth = next((SAMPLES / "http-get" / "worker2").glob("cali*.pcap"))
    doc = analyze_json(capsys, str(veth))
    first = {p["tcp_flags"]: p["hops"][0] for p in doc["flows"][0]["packets"]}
    assert (first["S"]["ttl"], first["S"]["why"]) == (62, "first seen here; TTL 62: routed twice before")
    assert (first["SA"]["ttl"], first["SA"]["why"]) == (64, "as the pod sent it")
    # with the whole capture set, the SYN's first hop is curl's veth: as curl sent it
    whole = analyze_json(capsys, str(SAMPLES / "http-get"))
    assert next(p for p in whole["flows"][0]["packets"] if p["tcp_flags"] == "S")["hops"][0]["why"] == "as the pod sent it"


@needs_tshark
@pytest.mark.parametrize("summary", [False, True])
def test_a_frame_missing_from_one_middle_capture_is_a_gap_not_a_drop(capsys, tmp_path, summary):
    """One frame cut out of worker2/eth1 (as when tcpdump's buffer drops one): the packet was seen
    before and after that point, so it was not lost there but not captured there: said so in
    every view and in the JSON (`gaps`), counted apart from losses."""
    import shutil
    import subprocess
    gap = tmp_path / "gap"
    shutil.copytree(SAMPLES / "http-get", gap)
    subprocess.run(["editcap", str(SAMPLES / "http-get" / "worker2" / "eth1.pcap"), str(gap / "worker2" / "eth1.pcap"),
                    "4"], check=True, capture_output=True)
    mode = ["--summary"] if summary else []
    doc = analyze_json(capsys, str(gap), *mode)
    [flow] = doc["flows"]
    assert flow["summary"]["reached_end"] == 12 and flow["summary"]["stopped"] == {} and flow["summary"]["gaps"] == 1
    segments = {(s["src"], s["dst"]): s for s in doc.get("summary", {}).get("segments", [])} if summary else {}
    if summary:
        seg = segments[("worker1/eth1", "worker2/eth1")]
        assert (seg["lost"], seg["not_captured"]) == (0, 1)
        assert sum(s["lost"] for s in segments.values()) == 0
        return
    [p] = [p for p in flow["packets"] if p["missing"]]
    assert p["gaps"] == p["missing"] == ["worker2/eth1"] and p["last_seen"] == "httpbin/eth0"
    code, grid, err = run_cli(capsys, "analyze", str(gap))
    assert code == 0, err
    assert "○ not captured at worker2/eth1: seen before and after" in grid and "stopped after" not in grid
    code, text, err = run_cli(capsys, "analyze", str(gap), "--view", "hops")
    assert code == 0, err
    assert "not captured at worker2/eth1: seen before and after" in text and "stopped after" not in text
    assert "stopped on the way" not in text and "1 not captured at a point it passed" in text
    # the row sits where the packet passed the point: between worker1/eth1 and worker2/vxlan.calico
    rows = [line.split()[:2] for line in text.splitlines() if line[:1] in "0123456789·" and len(line.split()) > 1]
    [i] = [k for k, (mark, _) in enumerate(rows) if mark == "·"]
    assert rows[i][1] == "worker2/eth1"
    assert rows[i - 1] == ["4", "worker1/eth1"] and rows[i + 1] == ["5", "worker2/vxlan.calico"]
    # the grid marks the same point of that packet ○ (passed, not captured), and no ✗
    code, grid, err = run_cli(capsys, "analyze", str(gap), "--view", "grid")
    [row] = [line for line in grid.splitlines() if "○" in line and line.strip()[:1].isdigit()]
    assert [c.strip() for c in row.split("│")][3:][4] == "○" and "✗" not in grid.split("● seen")[0]
    # and the merged pcapng's comments say it stopped nowhere (the gap is a point it passed)
    merged = tmp_path / "gap.pcapng"
    assert run_cli(capsys, "analyze", str(gap), "--pcapng", str(merged))[0] == 0
    comments = tshark_lines(merged, "-T", "fields", "-e", "frame.comment")
    assert len(comments) == 95 and not [c for c in comments if "further" in c]


def test_without_path_json_an_eth0_that_saw_nothing_alone_is_not_called_underlay(capsys, tmp_path):
    """pcaps/policy-drop without its path.json: httpbin/eth0 saw nothing (the SYNs were dropped
    on worker1), so nothing tells a pod's eth0 from a node's NIC: 'unknown', not 'underlay';
    curl/eth0 (Calico's MAC in its frames) stays a pod veth, the nodes' eth1 (beside their
    other points) underlay NICs."""
    import shutil
    shutil.copytree(SAMPLES / "policy-drop", tmp_path / "pd")
    (tmp_path / "pd" / "path.json").unlink()
    roles = {p["id"]: p["role"] for p in analyze_json(capsys, str(tmp_path / "pd"))["points"]}
    assert roles["httpbin/eth0"] == "unknown" and roles["curl/eth0"] == "pod-veth"
    assert roles["worker1/eth1"] == roles["worker2/eth1"] == "underlay"
    # with path.json the pods are known: their eth0 are pod veths, seen or not
    roles = {p["id"]: p["role"] for p in analyze_json(capsys, str(SAMPLES / "policy-drop"))["points"]}
    assert roles["httpbin/eth0"] == roles["curl/eth0"] == "pod-veth"


@needs_tshark
def test_a_capture_cut_short_gives_gaps_and_puts_the_encapsulation_on_its_node(capsys, tmp_path):
    """worker1/eth1's capture cut after its 6th frame: the later packets pass it uncaptured (a gap,
    in both directions, never 'stopped after' their own destination), and the request's VXLAN
    encapsulation is said to happen on worker1, though first seen at worker2/eth1."""
    import shutil
    import subprocess
    cut = tmp_path / "cut"
    shutil.copytree(SAMPLES / "http-get", cut)
    subprocess.run(["editcap", "-r", str(SAMPLES / "http-get" / "worker1" / "eth1.pcap"), str(cut / "worker1" / "eth1.pcap"),
                    "1-6"], check=True, capture_output=True)
    [flow] = analyze_json(capsys, str(cut))["flows"]
    late = flow["packets"][6:]
    assert late and all(p["gaps"] == ["worker1/eth1"] and not p["hint"] for p in late)
    assert {p["direction"] for p in late} == {"request", "response"}
    for p in late:
        if p["direction"] == "request":
            hop = next(h for h in p["hops"] if "encap" in h["changes"])
            assert hop["point"] == "worker2/eth1" and hop["why"].startswith("VXLAN encapsulated on worker1 (first seen so here)")
    code, text, err = run_cli(capsys, "analyze", str(cut))
    assert "stopped after" not in text and "stopped on the way" not in text
