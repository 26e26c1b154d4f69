"""MTU for a class (`lab up --mtu 1500`): pods whose MTU leaves VXLAN no room. `tracer path`
warns before anything is sent; a follow of a large response shows what the kernel does then:
worker2 answers httpbin's full-size packets with ICMP "fragmentation needed" (next-hop MTU 1450,
vxlan.calico's), httpbin lowers its path MTU and the transfer completes in smaller packets."""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

import pytest

from conftest import make_store, run_tracer
from factories import needs_tshark, tshark_lines
from tracer.cluster.lab import down, up
from tracer.cluster.lab.topology import exercise

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def lab():
    store = make_store("u" + secrets.token_hex(2))
    built = up(dataclasses.replace(exercise(), pod_mtu=1500), store=store)
    try:
        yield built
    finally:
        down(store)


def test_status_and_path_say_the_pods_mtu_leaves_vxlan_no_room(lab) -> None:
    status = json.loads(run_tracer("lab", "status", "-o", "json", store=lab.store, check=True).stdout)
    assert (status["mtu"], status["pod_mtu"]) == (1450, 1500)
    doc = json.loads(run_tracer("path", "curl", "httpbin", "-o", "json", store=lab.store, check=True).stdout)
    warning = next(w for w in doc["warnings"] if "MTU" in w)
    assert "curl's MTU 1500 + VXLAN's 50 bytes = 1550 > eth1's MTU 1500" in warning and "should be 1450" in warning
    text = run_tracer("path", "curl", "httpbin", store=lab.store, check=True).stdout
    assert "fragmentation needed" in text


@needs_tshark
def test_a_large_response_meets_fragmentation_needed_and_still_arrives(lab, tmp_path: Path) -> None:
    proc = run_tracer("follow", "curl", "httpbin", "--path", "/bytes/102400", "--save", str(tmp_path / "run"),
                      "-o", "json", store=lab.store)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["follow"]["curl"][0]["status"] == 200 and doc["follow"]["curl"][0]["bytes"] == 102400
    icmp = [f for f in doc["flows"] if f["protocol"] == "icmp"]
    assert icmp, [f["protocol"] for f in doc["flows"]]  # (shown beside the run's connection)
    summaries = [p["summary"] for f in icmp for p in f["packets"]]
    assert any("fragmentation needed, next-hop MTU 1450" in s and s.endswith("-> 172.18.104.14") for s in summaries)
    # the packets worker2 refused stopped at httpbin's veth, and their hint says why
    flow = next(f for f in doc["flows"] if f["http"])
    refused = [p for p in flow["packets"] if p["missing"]]
    assert refused and all(p["last_seen"].startswith("worker2/cali") and "ICMP fragmentation needed (next-hop MTU 1450)"
                           in p["hint"] for p in refused)
    assert any(p["retransmission"] and not p["missing"] for p in flow["packets"])  # (sent again, smaller)
    # tshark sees the same ICMP on httpbin's veth, with the MTU it names
    veth = next(c["point"] for c in doc["follow"]["captures"] if c["point"].startswith("worker2/cali"))
    lines = tshark_lines(tmp_path / "run" / "worker2" / f"{veth.split('/')[1]}.pcap", "-Y", "icmp.type == 3 && icmp.code == 4",
                         "-T", "fields", "-E", "occurrence=f", "-e", "icmp.mtu", "-e", "ip.dst")
    assert lines and all(line.split() == ["1450", "172.18.104.14"] for line in lines)
