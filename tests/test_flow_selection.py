"""Which flows the text view shows, how it numbers them, and what it says of the others."""

from __future__ import annotations

from factories import CURL, HTTPBIN, SAMPLES, eth, ipv4, pcap_bytes, run_cli, tcp, udp

DNS = "10.152.183.10"


def two_flows(tmp_path):
    """worker1/eth1 and worker2/eth1, each seeing a DNS query (flow 1, no HTTP) and an HTTP GET
    (flow 2), one routing step apart."""
    for node, ttl, t0 in (("worker1", 64, 1700000000.0), ("worker2", 63, 1700000000.0005)):
        frames = [eth("0a:58:ac:12:a6:8b", "ee:ee:ee:ee:ee:ee", 0x0800,
                      ipv4(CURL, DNS, 17, udp(5353, 53, b"\x12\x34" + b"\x00" * 30), ttl=ttl, ip_id=7)),
                  eth("0a:58:ac:12:a6:8b", "ee:ee:ee:ee:ee:ee", 0x0800,
                      ipv4(CURL, HTTPBIN, 6, tcp(40000, 80, seq=5, ack=9, flags=0x18, payload=b"GET / HTTP/1.1\r\n\r\n"),
                           ttl=ttl, ip_id=8))]
        (tmp_path / node).mkdir()
        (tmp_path / node / "eth1.pcap").write_bytes(pcap_bytes(frames, times=[t0, t0 + 0.001]))
    return tmp_path


def numbers(capsys, path) -> dict[str, int]:
    """Protocol -> flow number, from the JSON (the order flows are numbered in)."""
    code, out, err = run_cli(capsys, "analyze", str(path), "-o", "json")
    import json
    return {f["protocol"]: i for i, f in enumerate(json.loads(out)["flows"], 1)}


def test_a_flow_left_out_is_said(capsys, tmp_path):
    n = numbers(capsys, two_flows(tmp_path))
    code, out, err = run_cli(capsys, "analyze", str(tmp_path))
    assert code == 0, err
    assert "1 other flow (1 packets), neither HTTP nor with packets that stopped, in the captures not shown " \
           "(--all-flows)" in out
    # numbered as in the whole capture, as --flow takes it, whatever is shown
    assert f"Flow {n['tcp']}: TCP" in out and f"Flow {n['udp']}:" not in out
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--all-flows")
    assert f"Flow {n['udp']}: UDP" in out and f"Flow {n['tcp']}: TCP" in out and "not shown" not in out


def test_flows_that_lost_packets_are_shown_beside_http(capsys):
    # http-get's request, and vxlan-drop's connection whose SYNs were dropped on worker2 (no HTTP)
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES / "http-get"), str(SAMPLES / "vxlan-drop"))
    assert code == 0, err
    assert out.count("Flow ") == 2 and "stopped on the way" in out and "not shown" not in out


def test_a_flow_that_is_not_there(capsys, tmp_path):
    code, out, err = run_cli(capsys, "analyze", str(two_flows(tmp_path)), "--flow", "9")
    assert code == 4 and out == ""
    assert "no flow matches --flow 9: the captures hold 2 flows" in err and "hint:" in err
    n = numbers(capsys, tmp_path)
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--flow", str(n["udp"]))
    assert code == 0 and f"Flow {n['udp']}: UDP" in out
    assert "1 other flow (1 packets) not matching --flow in the captures not shown\n" in out


def test_capture_sets_mixed_are_warned_of(capsys, tmp_path):
    # Paths longer than the 200-column view: the warning stays one line, each path whole to be
    # copied (CI's checkout path is longer than this machine's; a folded path broke this test).
    import shutil
    a, b = (shutil.copytree(SAMPLES / s, tmp_path / ("run-" + s + "-" + "x" * 120)) for s in ("http-get", "vxlan-drop"))
    code, out, err = run_cli(capsys, "analyze", str(a), str(b))
    assert code == 0
    line = (f"warning: 8 points are read from files in different directories (as curl/eth0: {a / 'curl' / 'eth0.pcap'}, "
            f"{b / 'curl' / 'eth0.pcap'}): captures of different runs taken as one?")
    assert len(line) > 200 and out.splitlines()[0].startswith(line)
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES / "http-get"))
    assert "different directories" not in out


def test_warnings_come_before_the_flows(capsys, tmp_path):
    import shutil
    d = tmp_path / "cut"
    shutil.copytree(SAMPLES / "http-get", d)
    eth1 = d / "worker2" / "eth1.pcap"
    eth1.write_bytes(eth1.read_bytes()[:-30])
    for extra in ((), ("--summary",)):
        code, out, err = run_cli(capsys, "analyze", str(d), *extra)
        assert code == 0
        first_flow = out.index("Flow 1:") if not extra else out.index("flows (")
        assert -1 < out.index("warning: ") < first_flow and "file cut short in packet" in out[:first_flow]


def test_retransmissions_as_wireshark_tells_them(capsys, tmp_path):
    """One capture point, one connection: what is sent again is marked, what only looks like it
    is not."""
    c, s = (CURL, 40000), (HTTPBIN, 80)

    def seg(src, dst, seq, ack, flags, payload=b"", ip_id=1):
        return eth("0a:58:ac:12:a6:8b", "ee:ee:ee:ee:ee:ee", 0x0800,
                   ipv4(src[0], dst[0], 6, tcp(src[1], dst[1], seq=seq, ack=ack, flags=flags, payload=payload),
                        ip_id=ip_id))

    frames = [
        (seg(c, s, 100, 0, 0x02, ip_id=1), False),                         # SYN
        (seg(c, s, 100, 0, 0x02, ip_id=2), True),                          # SYN again
        (seg(s, c, 900, 101, 0x12, ip_id=3), False),                       # SYN-ACK (its own direction)
        (seg(c, s, 101, 901, 0x18, b"a" * 10, ip_id=4), False),            # 10 bytes
        (seg(c, s, 101, 901, 0x18, b"a" * 10, ip_id=4), False),            # the same IP packet seen twice
        (seg(c, s, 101, 901, 0x18, b"a" * 25, ip_id=5), True),             # resent with more (other length)
        (seg(c, s, 125, 901, 0x10, b"a", ip_id=6), False),                 # keep-alive: 1 byte before the end
        (seg(c, s, 126, 901, 0x14, ip_id=7), False),                       # RST
        (seg(c, s, 126, 901, 0x14, ip_id=8), False),                       # RST again: not a retransmission
    ]
    (tmp_path / "worker1").mkdir()
    (tmp_path / "worker1" / "eth1.pcap").write_bytes(pcap_bytes([f for f, _ in frames]))
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "-o", "json", "--all-flows")
    import json
    packets = [p for f in json.loads(out)["flows"] for p in f["packets"]]
    assert [p["retransmission"] for p in packets] == [r for _, r in frames]
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--all-flows", "--view", "hops")
    assert out.count("(retransmission)") == 2
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--all-flows")  # the grid
    assert out.count("(again)") == 2 and out.count(": sent again: a retransmission") == 1  # (one note for both)


def test_a_flow_by_its_number_with_a_hash(capsys, tmp_path):
    n = numbers(capsys, two_flows(tmp_path))
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--flow", f"#{n['udp']}")
    assert code == 0 and f"Flow {n['udp']}: UDP" in out and f"Flow {n['tcp']}:" not in out
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--flow", "#1501")
    assert code == 4 and "no flow matches --flow #1501" in err


def test_follow_shows_what_it_has_when_its_flow_is_not_there(tmp_path):
    """tracer follow passes its own connection as --flow: not captured is not an error there
    (its header, the curl result, still comes first)."""
    import io
    from rich.text import Text

    from tracer.app.analyze import AnalyzeRequest, analyze
    from tracer.render.analysis import show
    out = io.StringIO()
    show(analyze(AnalyzeRequest(paths=(str(two_flows(tmp_path)),), flows=("10.9.9.9",))), out, header=Text("curl: 200 OK"))
    text = out.getvalue()
    assert text.startswith("curl: 200 OK") and "None of the 2 flows in the captures is the one asked for." in text
