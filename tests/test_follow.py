"""`tracer follow` on the real lab: every hop captured by the agents, nothing left behind.

Each test drives the real CLI in a subprocess against this module's lab (tests/conftest.py),
and checks what it reports against the kernel's own state (ip -j link in the namespaces).
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ip_json, ns_run, run_tracer, store_env
from factories import children, cmdline, wait_for
from tracer.cluster.lab import netns

pytestmark = [pytest.mark.root, pytest.mark.slow]


def mac(ns: str, dev: str) -> str:
    return ip_json(ns, "link", "show", "dev", dev)[0]["address"]


def follow_json(lab, *args: str) -> dict:
    proc = run_tracer("follow", "curl", "httpbin", "-o", "json", *args, store=lab.store, check=True)
    return json.loads(proc.stdout)


def packet(flow: dict, flags: str) -> dict:
    return next(p for p in flow["packets"] if p["tcp_flags"] == flags)


def hop_view(doc: dict) -> list[list[tuple]]:
    """What must not differ between follow and analyze: per packet, per hop."""
    return [[(h["point"], h["eth_src"], h["eth_dst"], h["ttl"], json.dumps(h["encap"], sort_keys=True), h["changes"])
             for h in p["hops"]] for f in doc["flows"] for p in f["packets"]]


@pytest.fixture(scope="module")
def real(lab):
    """The lab's points and MACs as the kernel reports them."""
    curl, httpbin = lab.pod("curl"), lab.pod("httpbin")
    w1, w2 = lab.node("worker1"), lab.node("worker2")
    return {
        "way": [f"worker1/{curl.host_veth}", "worker1/vxlan.calico", "worker1/eth1",
                "worker2/eth1", "worker2/vxlan.calico", f"worker2/{httpbin.host_veth}"],
        "curl": mac(curl.netns, "eth0"), "httpbin": mac(httpbin.netns, "eth0"),
        "cali1": mac(w1.netns, curl.host_veth), "cali2": mac(w2.netns, httpbin.host_veth),
        "vx1": mac(w1.netns, "vxlan.calico"), "vx2": mac(w2.netns, "vxlan.calico"),
        "eth1": mac(w1.netns, "eth1"), "eth2": mac(w2.netns, "eth1"),
    }


def test_syn_and_synack_pass_all_six_points_with_the_real_macs_ttls_and_vxlan(lab, real):
    doc = follow_json(lab)
    assert doc["follow"]["curl"][0]["status"] == 200
    assert doc["follow"]["backend"] == "lab"
    flow = doc["flows"][0]
    r = real
    expected = {
        "S": (r["way"], [(r["curl"], r["cali1"]), (r["vx1"], r["vx2"]), None, None, (r["vx1"], r["vx2"]),
                         (r["cali2"], r["httpbin"])], (r["eth1"], r["eth2"])),
        "SA": (r["way"][::-1], [(r["httpbin"], r["cali2"]), (r["vx2"], r["vx1"]), None, None, (r["vx2"], r["vx1"]),
                                (r["cali1"], r["curl"])], (r["eth2"], r["eth1"])),
    }
    for flags, (way, macs, outer) in expected.items():
        hops = packet(flow, flags)["hops"]
        assert [h["point"] for h in hops] == way, flags
        assert [h["ttl"] for h in hops] == [64, 63, 63, 63, 63, 62], flags
        for h, m in zip(hops, macs):
            if m is None:  # underlay: the outer Ethernet header carries the NICs' MACs
                e = h["encap"]
                assert (e["type"], e["vni"], e["udp_dport"]) == ("vxlan", 4096, 4789), flags
                assert (e["outer_eth_src"], e["outer_eth_dst"]) == outer, flags
            else:
                assert (h["eth_src"], h["eth_dst"]) == m, (flags, h["point"])
                assert h["encap"] is None
    assert [c["packets"] > 0 and c["dropped"] == 0 for c in doc["follow"]["captures"]] == [True] * 6


def test_save_then_analyze_shows_the_same_hops(lab, tmp_path):
    saved = tmp_path / "run"
    doc = follow_json(lab, "--save", str(saved))
    files = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    assert "path.json" in files and len([f for f in files if f.endswith(".pcap")]) == 6
    # (the agents ran over the whole exchange: analyze need not wonder whether a point was capturing)
    assert json.loads((saved / "path.json").read_text())["captured_together"] is True
    again = json.loads(run_tracer("analyze", str(saved), "-o", "json", store=lab.store, check=True).stdout)
    assert hop_view(again) == hop_view(doc)
    text = run_tracer("analyze", str(saved), store=lab.store, check=True).stdout
    assert "(curl)" in text and "(httpbin)" in text


def test_the_saved_to_line_keeps_a_long_path_whole(lab, tmp_path):
    saved = tmp_path / ("run-" + "x" * 150)  # (past the 200 columns of a view that is not a terminal)
    text = run_tracer("follow", "curl", "httpbin", "--save", str(saved), store=lab.store, check=True).stdout
    assert f"  saved to {saved} (tracer analyze {saved})" in text.splitlines()


def test_text_view_names_the_pods_and_gives_the_curl_result_and_a_summary(lab):
    out = run_tracer("follow", "curl", "httpbin", store=lab.store, check=True).stdout
    assert "request 1: HTTP 200 in" in out
    # ... and the bytes received: httpbin's /get answer, as curl counted them
    got = re.search(r"request 1: HTTP 200 in [0-9.]+ ms, ([0-9,]+) bytes", out)
    assert got and int(got.group(1).replace(",", "")) > 100, out
    doc = follow_json(lab, "--path", "/bytes/1234")
    assert doc["follow"]["curl"][0]["bytes"] == 1234
    assert "(curl)" in out and "(httpbin)" in out
    summary = next(line for line in out.splitlines() if line.startswith("summary:"))
    assert "6 hops" in summary and "MAC rewrite" in summary and "VNI 4096" in summary and "4789" in summary


def test_count_gives_one_flow_per_request(lab):
    doc = follow_json(lab, "--count", "3")
    assert [c["status"] for c in doc["follow"]["curl"]] == [200, 200, 200]
    assert len(doc["flows"]) == 3
    # numbered in request order: flow N is request N (its client port is that curl's)
    assert [f["client"].rsplit(":", 1)[1] for f in doc["flows"]] == [str(c["local_port"]) for c in doc["follow"]["curl"]]
    assert all(not p["missing"] for f in doc["flows"] for p in f["packets"])


def test_proxy_arp_off_says_nothing_left_the_pod_and_why_and_exits_7(lab):
    node, pod = lab.node("worker1"), lab.pod("curl")
    ns_run(node.netns, "sysctl", "-q", "-w", f"net.ipv4.conf.{pod.host_veth}.proxy_arp=0")
    try:
        ns_run(pod.netns, "ip", "neigh", "flush", "all")  # (else the pod goes on with the MAC it holds)
        proc = run_tracer("follow", "curl", "httpbin", "--timeout", "2", store=lab.store)
    finally:
        ns_run(node.netns, "sysctl", "-q", "-w", f"net.ipv4.conf.{pod.host_veth}.proxy_arp=1")
        ns_run(pod.netns, "ip", "neigh", "flush", "all")  # (the FAILED entry would hold the next tests up)
    assert proc.returncode == 7, proc.stderr
    assert "request 1: failed: timed out" in proc.stdout
    assert "nothing left curl: no frame of the request at any point of the way" in proc.stdout
    assert f"warning: proxy_arp is 0 on worker1/{pod.host_veth}: nobody answers ARP for 169.254.1.1" in proc.stdout
    # ... and the pod's unanswered who-has, captured on its veth, is shown as what did leave it
    assert f"{pod.ip} asked for 169.254.1.1" in proc.stdout and "no answer seen" in proc.stdout


def test_a_refused_port_is_still_traced_and_exits_7(lab):
    proc = run_tracer("follow", "curl", "httpbin", "-o", "json", "--port", "81", "--timeout", "3", store=lab.store)
    assert proc.returncode == 7, proc.stderr  # (ExitCode.NO_ANSWER: a script can tell; the view is there)
    doc = json.loads(proc.stdout)
    c = doc["follow"]["curl"][0]
    assert c["status"] is None and c["exit_code"] == 7
    flags = [p["tcp_flags"] for p in doc["flows"][0]["packets"]]
    assert "S" in flags and any("R" in f for f in flags)


def test_only_the_runs_own_connections_are_shown_the_others_are_counted(lab):
    # Another connection between the same pods, begun once the run's own request is in flight
    # (so that the captures are running, however long the agents took to start), puts packets
    # into the captures: the view is about the run's own request, named by curl's source port,
    # and says what else it saw.
    curl, httpbin = lab.pod("curl"), lab.pod("httpbin")

    def follow_beside_another(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, "-m", "tracer", "follow", "curl", "httpbin", "--path", "/delay/2",
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=store_env(lab.store))
        bg = None
        try:
            wait_for(lambda: requesting(proc.pid, "/delay/2"), timeout=60)
            bg = subprocess.Popen(lab.argv("curl", ["curl", "-s", "-o", "/dev/null", f"http://{httpbin.ip}/delay/1"]))
            out, err = proc.communicate(timeout=60)
            assert bg.wait(10) == 0
        finally:
            for p in (proc, bg):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(10)
        assert proc.returncode == 0, err
        return out

    doc = json.loads(follow_beside_another("-o", "json"))
    text = follow_beside_another()
    c = doc["follow"]["curl"][0]
    assert c["status"] == 200 and isinstance(c["local_port"], int)
    assert [f["client"] for f in doc["flows"]] == [f"{curl.ip}:{c['local_port']}"]
    assert doc["flows"][0]["packets"][0]["tcp_flags"] == "S"
    # the other connection was captured too: the points count it
    assert sum(p["packets"] for p in doc["points"]) > 6 * len(doc["flows"][0]["packets"])
    assert "1 other flow (" in text and "not shown (--all-flows)" in text


@pytest.mark.parametrize("args, code, words", [
    (("follow", "curl", "nosuchpod"), 4, "no pod 'nosuchpod'"),
    (("follow", "curl", "curl"), 2, "same pod"),
    (("follow", "curl", "httpbin", "--save", "/"), 2, "not empty"),
    (("follow", "curl", "httpbin", "--save", "/proc/tracer-nosuch/run1"), 2, "--save /proc/tracer-nosuch/run1: cannot create"),
    (("follow", "curl", "httpbin", "--live", "--save", "x"), 2, "--live shows a live view"),
])
def test_clear_errors(lab, args, code, words):
    proc = run_tracer(*args, store=lab.store)
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_save_below_a_file_is_refused_before_capturing(lab, tmp_path):
    (tmp_path / "afile").write_text("")
    proc = run_tracer("follow", "curl", "httpbin", "--save", str(tmp_path / "afile" / "x"), store=lab.store)
    assert proc.returncode == 2 and "cannot create the directory (Not a directory)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "request 1" not in proc.stdout  # (refused before curl ran)


def test_a_save_directory_made_for_a_failed_run_is_not_left_behind(lab, tmp_path):
    proc = run_tracer("follow", "curl", "nosuchpod", "--save", str(tmp_path / "run1"), store=lab.store)
    assert proc.returncode == 4, proc.stderr
    assert not (tmp_path / "run1").exists()


def test_many_requests_summarized_say_how_to_see_a_flows_hops_with_follow(lab):
    proc = run_tracer("follow", "curl", "httpbin", "--count", "40", store=lab.store, check=True)
    assert "showing the summary (--save DIR, then tracer analyze DIR --flow N for one flow's hops)" in proc.stdout


def test_a_source_without_curl_is_a_clear_error_and_leaves_nothing(lab, tmp_path):
    # The lab's pods share the host's files: a PATH with iproute2 and cat, but no curl, is a pod
    # image without curl as far as `tracer follow` can tell.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "cat", "bridge"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    env = {**store_env(lab.store), "PATH": str(bin_dir), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "tracer", "follow", "curl", "httpbin"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "pod curl has no curl" in proc.stderr and "hint:" in proc.stderr
    assert not list(tmp_path.glob("tracer-follow-*"))


# --- Ctrl-C at every phase ------------------------------------------------------------------------

def agents_of(tracer_pid: int) -> list[int]:
    """A run's own agents (--agents cold): the tracer's children."""
    return [p for p in children(tracer_pid) if any(a.endswith("agent.py") for a in cmdline(p))]


def warm_agents_of(lab) -> list[int]:
    """The agents the lab's warm agent servers forked (for runs now)."""
    return [c for p in lab.store.load().agents.values() for c in children(p.pid)]


def run_agents(lab, tracer_pid: int, agents: str, before: list[int]) -> list[int]:
    """The run's agents: its children (cold), or what the warm servers forked since `before`
    (an earlier run's agent may still be draining)."""
    return agents_of(tracer_pid) if agents == "cold" else [a for a in warm_agents_of(lab) if a not in before]


def agents_gone(lab, agents: list[int]) -> bool:
    """Every agent of the run has exited (a warm one after its drain: it saw the EOF), and the
    lab's warm servers still run."""
    wait_for(lambda: all(not Path(f"/proc/{a}").exists() for a in agents), timeout=5)
    state = lab.store.load()
    return all(p.alive() for p in state.agents.values()) and len(state.agents) == len(lab.nodes)


def run_id_of(agent: int) -> str:
    """The --run-id on an agent's command line, read in one go: it changes while the agent execs
    (ip netns exec -> python), and reads empty for a moment."""
    argv = wait_for(lambda: (a := cmdline(agent)) and "--run-id" in a and a)
    return argv[argv.index("--run-id") + 1]


def requesting(tracer_pid: int, path: str) -> bool:
    """Whether the run's own curl runs: its URL's path on a child's command line (discovery's
    reads run in the curl pod's namespace too, so "curl" alone would match them). A child
    between fork and exec still has tracer's own command line, the path in it: not the curl."""
    own = cmdline(tracer_pid)
    return any(any(path in a for a in argv) for c in children(tracer_pid) if (argv := cmdline(c)) != own)


def processes_with(word: str) -> list[int]:
    me = os.getpid()
    return [int(d.name) for d in Path("/proc").iterdir()
            if d.name.isdigit() and int(d.name) != me and word in cmdline(int(d.name))]


@pytest.mark.parametrize("agents_mode", ["cold", "warm"])
@pytest.mark.parametrize("phase", ["agents starting", "request in flight", "collecting"])
def test_ctrl_c_at_any_phase_leaves_no_agent_and_the_lab_intact(lab, tmp_path, phase, agents_mode):
    env = {**store_env(lab.store), "TMPDIR": str(tmp_path)}
    before = warm_agents_of(lab)
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "follow", "curl", "httpbin", "--path", "/delay/2",
                             "--agents", agents_mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        agents = wait_for(lambda: run_agents(lab, proc.pid, agents_mode, before))
        run_id = run_id_of(agents[0]) if agents_mode == "cold" else None
        if phase == "request in flight":
            # (the run's curl, still running 0.2 s later: the /delay/2 request takes two seconds)
            wait_for(lambda: requesting(proc.pid, "/delay/2"))
            time.sleep(0.2)
            wait_for(lambda: requesting(proc.pid, "/delay/2"))
        elif phase == "collecting":
            wait_for(lambda: requesting(proc.pid, "/delay/2"))
            wait_for(lambda: not requesting(proc.pid, "/delay/2"), step=0.0005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    if phase == "collecting" and proc.returncode == 0:
        pytest.skip("the run finished before the signal came")  # collecting takes ~0.1 s
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "tracer: interrupted"
    assert agents_gone(lab, agents)
    assert run_id is None or processes_with(run_id) == []
    assert not list(tmp_path.glob("tracer-follow-*"))
    assert sorted(netns.with_prefix(lab.store.prefix)) == sorted(lab.state.namespaces)
    if phase == "request in flight":  # the agents listened: what they had is shown before the end
        assert "request 1: failed: interrupted (Ctrl-C)" in out and "interrupted (Ctrl-C): what follows" in out
        assert "→ SYN" in out and "GET /delay/2" in out, out
    elif phase == "agents starting":
        assert "→ SYN" not in out  # (nothing listened yet: nothing to show)
    assert follow_json(lab)["follow"]["curl"][0]["status"] == 200


@pytest.mark.parametrize("agents_mode", ["cold", "warm"])
def test_sigterm_ends_the_run_like_ctrl_c(lab, agents_mode):
    before = warm_agents_of(lab)
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "follow", "curl", "httpbin", "--path", "/delay/2",
                             "--agents", agents_mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=store_env(lab.store))
    agents = wait_for(lambda: run_agents(lab, proc.pid, agents_mode, before))
    wait_for(lambda: requesting(proc.pid, "/delay/2"))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, err
    assert agents_gone(lab, agents)


# --- under load -----------------------------------------------------------------------------------

def test_every_packet_of_the_flow_is_captured_at_every_point_under_load(lab, capsys):
    curl, httpbin = lab.pod("curl"), lab.pod("httpbin")
    server = subprocess.Popen(lab.argv("httpbin", ["iperf3", "-s", "-1", "-p", "5201"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        time.sleep(0.3)
        # TCP at full speed through the same veths, VXLAN devices and NICs, for the whole follow.
        client = subprocess.Popen(lab.argv("curl", ["iperf3", "-c", httpbin.ip, "-p", "5201", "-t", "8", "-P", "2"]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        doc = follow_json(lab, "--count", "5")
        assert client.poll() is None, "the load ended before the follow did"
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(5)
    iperf_out = client.communicate()[0] if client else ""
    points = 6
    # The flows are the five connections this run's curl made (by source port): the late answer
    # of a request an earlier test interrupted can be in the captures too, and is not shown.
    ports = {f"{curl.ip}:{c['local_port']}" for c in doc["follow"]["curl"]}
    traced = [f for f in doc["flows"] if f["client"] in ports]
    packets = [p for f in traced for p in f["packets"]]
    expected = len(packets) * points
    captured = sum(len(p["hops"]) for p in packets)
    with capsys.disabled():
        load = next((l for l in iperf_out.splitlines() if "SUM" in l and "sender" in l), "?").split()
        print(f"\n  under load ({' '.join(load[5:7]) if len(load) > 6 else 'iperf3'}): "
              f"captured {captured}/{expected} sightings of {len(packets)} packets in {len(traced)} flows"
              f" ({len(doc['flows']) - len(traced)} flows not the run's own)")
    assert [c["status"] for c in doc["follow"]["curl"]] == [200] * 5
    assert len(traced) == 5 == len(doc["flows"])
    assert all(len(f["packets"]) >= 10 for f in traced)  # handshake, request, response, teardown
    assert captured == expected
    assert all(c["dropped"] == 0 for c in doc["follow"]["captures"])


# --- live -----------------------------------------------------------------------------------------

def test_watch_lights_up_every_point_for_every_packet_with_the_marks(lab):
    env = {**store_env(lab.store), "COLUMNS": "160"}
    proc = subprocess.run([sys.executable, "-m", "tracer", "watch", "curl", "httpbin", "--iterations", "2"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "request 2: HTTP 200" in out
    rows = [line for line in out.splitlines() if line.startswith(("→ ", "← "))]
    syn = next(r for r in rows if r.startswith("→ SYN "))
    synack = next(r for r in rows if r.startswith("← SYN-ACK"))
    # request: seen, routed (MAC, TTL 63), encapsulated (VNI 4096), across, decapsulated, routed (TTL 62)
    assert [c.strip() for c in syn.split("│")[1:]] == ["● 64", "M 63", "⊕4096 63", "● 63", "⊖ 63", "M 62"]
    assert [c.strip() for c in synack.split("│")[1:]] == ["M 62", "⊖ 63", "● 63", "⊕4096 63", "M 63", "● 64"]
    assert all("·" not in r for r in rows)


def test_follow_live_is_watch_and_ctrl_c_ends_it_cleanly(lab):
    before = warm_agents_of(lab)
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "follow", "curl", "httpbin", "--live"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=store_env(lab.store))
    try:
        agents = wait_for(lambda: [a for a in warm_agents_of(lab) if a not in before])  # (the lab's warm agents)
        # a request or two, live: the agents must be ready first, which on two busy CPUs can take
        # more than a second (at 1.5 s a run once showed request 1 still in flight, no answer yet)
        time.sleep(3.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "HTTP 200" in out and "⊕4096" in out
    assert agents_gone(lab, agents)


def test_follow_view_grid_is_a_row_per_packet_with_a_mark_per_point(lab, real):
    proc = run_tracer("follow", "curl", "httpbin", "--view", "grid", store=lab.store, check=True)
    rows = [line for line in proc.stdout.splitlines() if "│ → " in line or "│ ← " in line]
    assert len(rows) >= 10  # (a GET: 10 to 12 packets, one row each)
    syn = next(r for r in rows if "→ SYN " in r or r.rstrip().endswith("→ SYN"))
    cells = [c.strip() for c in syn.split("│")[3:]]
    # the way's six points: curl's veth, the tunnel (MACs rewritten, routed), the NICs, the other node
    assert cells == ["● 64", "M 63", "⊕4096 63", "● 63", "⊖ 63", "M 62"]
    assert "⊕ encapsulated (VNI)" in proc.stdout


def test_the_pods_arp_for_its_gateway_is_shown_as_packets_of_the_way(lab, tmp_path):
    """Step 3.3: with the pod's neighbour entry gone, the run shows its who-has 169.254.1.1 and the
    proxy-ARP answer from the host end of its veth (the kernel's MAC for it), in the view, the
    JSON and the merged pcapng."""
    pod, node = lab.pod("curl"), lab.node("worker1")
    ns_run(pod.netns, "ip", "neigh", "flush", "all")
    merged = tmp_path / "run.pcapng"
    doc = follow_json(lab, "--pcapng", str(merged))
    cali = f"worker1/{pod.host_veth}"
    arp = [f for f in doc["flows"] if f["protocol"] == "arp" and f["client"] == pod.ip]
    assert arp, [f["protocol"] for f in doc["flows"]]
    asks = [p for p in arp[0]["packets"] if p["hops"][0]["arp"]["op"] == "request"]
    answers = [p for p in arp[0]["packets"] if p["hops"][0]["arp"]["op"] == "reply"]
    assert asks and answers
    assert asks[0]["hops"][0]["arp"]["target_ip"] == "169.254.1.1" and asks[0]["hops"][0]["point"] == cali
    assert answers[0]["hops"][0]["arp"]["sender_mac"] == mac(node.netns, pod.host_veth) == "ee:ee:ee:ee:ee:ee"
    assert "proxy-ARP" in answers[0]["hops"][0]["why"]
    assert doc["follow"]["curl"][0]["status"] == 200
    # every frame the agents captured is in the merged pcapng (tshark counts them)
    captured = sum(c["packets"] for c in doc["follow"]["captures"])
    out = subprocess.run(["tshark", "-n", "-r", str(merged), "-T", "fields", "-e", "_ws.col.Protocol"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == captured and "ARP" in out


def test_a_save_that_fails_after_the_run_still_shows_it_and_says_what_failed(lab, tmp_path):
    """The --save directory checked before capturing is gone when the captures are written (here:
    a file in its place): the run is shown all the same, one line says what failed, exit 1."""
    save = tmp_path / "run"
    env = {**store_env(lab.store), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "follow", "curl", "httpbin", "--path", "/delay/1",
                             "--save", str(save)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: save.is_dir() and requesting(proc.pid, "/delay/1"))
        save.rmdir()
        save.write_text("in the way\n")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "request 1: HTTP 200" in out and "→ SYN" in out  # the run, shown
    assert f"not saved: --save {save}: could not write the captures" in out
    assert err.strip().splitlines()[-1].startswith(f"tracer: --save {save}: could not write the captures (")
    assert save.read_text() == "in the way\n" and not list(tmp_path.glob("tracer-follow-*"))
