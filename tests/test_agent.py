"""The capture agent (capture-pod/agent.py) and its protocol, on the lab's real interfaces.

The agent runs as `tracer follow` runs it (LabFollowBackend.start_agent) and is spoken to through
the same client (AgentClient), so these tests pin the protocol both backends rely on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import make_store
from factories import children, wait_for

from tracer.cluster.agents import AgentClient, AgentError, CaptureSpec, agent_argv
from tracer.cluster.lab import down, exercise, up
from tracer.cluster.lab.agents import AGENT
from tracer.cluster.lab.backend import LabAgentChannel, LabFollowBackend
from tracer.errors import NotFoundError
from tracer.capture.pcapio import open_capture

pytestmark = [pytest.mark.root]

PCAP_NANO_MAGIC = b"\x4d\x3c\xb2\xa1"  # 0xa1b23c4d, little-endian


@pytest.fixture
def backend(lab):
    """Agents started for the run (`--agents cold`): the process is the agent."""
    b = LabFollowBackend(lab, agents="cold")
    yield b
    b.close()
    assert all(c.exit_status() is not None for c in b.channels)


@pytest.fixture(params=["cold", "warm"])
def either(lab, request):
    """Agents started for the run, or forked by the lab's warm agent of the node: the protocol
    is the same."""
    b = LabFollowBackend(lab, agents=request.param)
    yield b
    b.close()


def start(backend, node: str, captures: dict[str, str], **kw) -> AgentClient:
    specs = [CaptureSpec(interface=i, bpf=f) for i, f in captures.items()]
    agent = AgentClient(backend.start_agent(node, agent_argv("t-agent", specs, **kw)), node)
    return agent


def datagrams(lab, count: int = 2) -> None:
    """`count` UDP datagrams from pod curl to httpbin's port 9 (no ping in the lab)."""
    code = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range({count}): s.sendto(b'tracer %d' % i, ('{lab.pod('httpbin').ip}', 9))")
    res = lab.exec("curl", [sys.executable, "-c", code])
    assert res.returncode == 0, res.stderr


def frames(pcap: bytes, tmp_path) -> list:
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap)
    _, records = open_capture(path)
    return list(records)


def test_ready_then_stop_gives_a_nanosecond_pcap_per_interface_and_done(lab, backend, tmp_path):
    veth = lab.pod("curl").host_veth
    agent = start(backend, "worker1", {veth: "udp port 9", "eth1": "udp port 4789 and udp[52:2]=9"})
    assert agent.wait_ready(10) == [veth, "eth1"]
    assert agent.pid == agent.channel.pid  # `ip netns exec` execs: the PID tracer holds is the agent
    datagrams(lab, 3)  # at once after ready: nothing may be lost at the start
    caps = agent.stop_and_collect(10)
    assert set(caps) == {veth, "eth1"}
    for cap in caps.values():
        assert cap.pcap[:4] == PCAP_NANO_MAGIC
        recs = frames(cap.pcap, tmp_path)
        assert len(recs) == cap.packets == 3  # the datagrams, plain on the veth and in VXLAN on eth1
        times = [r[0] for r in recs]
        assert times == sorted(times)
    assert agent.channel.proc.wait(5) == 0


def test_the_kernel_filter_keeps_only_what_it_matches(lab, either):
    veth = lab.pod("curl").host_veth
    agent = start(either, "worker1", {veth: "tcp port 80"})
    agent.wait_ready(10)
    datagrams(lab)
    assert agent.stop_and_collect(10)[veth].packets == 0


def test_stream_mode_sends_each_frame_as_it_is_captured(lab, either):
    veth = lab.pod("curl").host_veth
    agent = start(either, "worker1", {veth: "udp port 9"}, stream=True)
    agent.wait_ready(10)
    datagrams(lab, 2)
    deadline = time.monotonic() + 5
    seen = [agent.next_event(deadline) for _ in range(2)]
    assert [e.kind for e in seen] == ["frame", "frame"]
    assert all(e.fields["interface"] == veth and len(e.payload) == e.fields["bytes"] > 0 for e in seen)
    assert seen[0].fields["time_ns"] <= seen[1].fields["time_ns"]
    assert agent.stop_and_collect(10)[veth].packets == 2


@pytest.mark.parametrize("captures, words", [
    ({"nosuch0": "udp"}, "no interface 'nosuch0'"),
    ({"eth1": "this is not bpf"}, "cannot compile the BPF filter"),
])
def test_errors_are_events_with_a_message(lab, either, captures, words):
    agent = start(either, "worker1", captures)
    with pytest.raises(AgentError, match=words):
        agent.wait_ready(10)


def test_eof_on_stdin_stops_the_agent_at_once(lab, backend):
    agent = start(backend, "worker1", {"eth1": "udp port 4789"})
    agent.wait_ready(10)
    t = time.monotonic()
    agent.channel.proc.stdin.close()  # the orchestrator is gone
    assert agent.channel.proc.wait(5) == 0
    assert time.monotonic() - t < 1.0


def test_sigterm_stops_with_the_pcaps(lab, backend):
    agent = start(backend, "worker1", {"eth1": "udp port 4789"})
    agent.wait_ready(10)
    os.kill(agent.channel.pid, signal.SIGTERM)
    assert set(agent.collect(10)) == {"eth1"}
    assert agent.channel.proc.wait(5) == 0


def test_max_seconds_stops_it_by_itself(lab, either):
    agent = start(either, "worker1", {"eth1": "udp port 4789"}, max_seconds=0.3)
    agent.wait_ready(10)
    assert set(agent.collect(5)) == {"eth1"}


def test_an_agent_killed_before_stop_is_told_as_killed_not_as_a_broken_pipe(lab, backend):
    agent = start(backend, "worker1", {"eth1": "udp port 4789"})
    agent.wait_ready(10)
    os.kill(agent.channel.pid, signal.SIGKILL)
    assert agent.channel.proc.wait(5) == -signal.SIGKILL
    agent.send_stop()  # into a pipe nobody reads any more: no error of its own
    with pytest.raises(AgentError) as e:
        agent.collect(5)
    assert e.value.message == "the capture agent on worker1 was killed (exit -9) before its captures"


def test_close_ends_an_agent_that_ignores_everything(lab, tmp_path):
    # A stuck agent (here: `sleep`, which never reads stdin) is ended by SIGTERM after the grace.
    b = LabFollowBackend(lab, python="/bin/sh", agent=tmp_path / "stuck.sh", agents="cold")
    (tmp_path / "stuck.sh").write_text("trap '' TERM; exec sleep 30\n")
    channel = b.start_agent("worker1", [])
    t = time.monotonic()
    b.close()
    assert channel.exit_status() is not None and time.monotonic() - t < 5


def test_agent_runs_with_python3_and_the_standard_library_plus_scapy_only(tmp_path):
    # The capture image has python3 + scapy: the agent imports nothing of tracer.
    agent = os.path.join(os.path.dirname(__file__), "..", "capture-pod", "agent.py")
    src = open(agent).read()
    assert "tracer" not in {line.split()[1].split(".")[0] for line in src.splitlines()
                            if line.startswith(("import ", "from "))}
    out = subprocess.run([os.environ.get("PYTHON", "python3"), agent, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--capture" in out.stdout


# --- standby and the end of the exchange ---------------------------------------------------------

def one_http_request(lab) -> None:
    res = lab.exec("curl", ["curl", "-s", "-o", "/dev/null", "--max-time", "5", f"http://{lab.pod('httpbin').ip}/get"])
    assert res.returncode == 0, res.stderr


def test_pod_starts_a_standby_agent_on_its_node_named_by_the_run_and_start_agent_uses_it(lab):
    b = LabFollowBackend(lab, run_id="t-standby", agents="cold")
    try:
        b.pod("curl")
        b.pod("curl")  # one per node
        assert len(b.channels) == 1
        standby = b.channels[0]
        deadline = time.monotonic() + 5  # `ip netns exec` execs the agent: until then ps shows ip
        while cmdline_of(standby.pid)[-3:] != ["--run-id", "t-standby", "--argv-from-stdin"]:
            assert time.monotonic() < deadline, cmdline_of(standby.pid)
            time.sleep(0.005)
        veth = lab.pod("curl").host_veth
        agent = AgentClient(b.start_agent("worker1", agent_argv("t-standby", [CaptureSpec(interface=veth, bpf="udp port 9")])),
                            "worker1")
        assert agent.channel is standby and len(b.channels) == 1
        assert agent.wait_ready(10) == [veth] and agent.pid == standby.pid
        datagrams(lab, 2)
        assert agent.stop_and_collect(10)[veth].packets == 2
    finally:
        b.close()
    assert all(c.exit_status() == 0 for c in b.channels)


def test_a_standby_agent_nobody_needs_exits_at_the_eof(lab):
    b = LabFollowBackend(lab, run_id="t-unused", agents="cold")
    b.pod("httpbin")
    t = time.monotonic()
    b.close()
    assert b.channels[0].exit_status() == 0 and time.monotonic() - t < 1.0


# --- warm agents (tracer.cluster.lab.agents: lab up starts one per node) ----------------------------

def server_of(lab, node: str) -> int:
    """The PID of the node's warm agent server, as the lab's state records it."""
    state = lab.store.load()
    assert state.warm and state.agents[node].alive()
    return state.agents[node].pid


def test_a_warm_agent_is_forked_by_the_nodes_server_and_gone_when_the_run_lets_it_go(lab):
    server = server_of(lab, "worker1")
    assert cmdline_of(server)[-2:] == ["--serve", str(lab.store.socket_path("worker1"))]
    b = LabFollowBackend(lab)
    try:
        b.pod("curl")  # connects: the server forks an agent in standby, scapy already imported
        assert b.warm_nodes == ["worker1"]
        veth = lab.pod("curl").host_veth
        agent = AgentClient(b.start_agent("worker1", agent_argv("t-warm", [CaptureSpec(interface=veth, bpf="udp port 9")])),
                            "worker1")
        assert agent.wait_ready(10) == [veth]
        assert agent.pid in children(server)  # in the node's namespace, as the server is
        datagrams(lab, 2)
        caps = agent.stop_and_collect(10)
        assert caps[veth].packets == 2 and caps[veth].pcap[:4] == PCAP_NANO_MAGIC
    finally:
        b.close()
    wait_for(lambda: agent.pid not in children(server), timeout=5)
    assert server_of(lab, "worker1") == server  # the server stays for the next run


def test_a_warm_agent_whose_client_vanished_mid_capture_stops_and_the_server_serves_the_next(lab):
    server = server_of(lab, "worker2")
    b = LabFollowBackend(lab)
    agent = AgentClient(b.start_agent("worker2", agent_argv("t-gone", [CaptureSpec(interface="eth1", bpf="udp")])),
                        "worker2")
    agent.wait_ready(10)
    b.close()  # as a tracer killed by SIGKILL: its end of the socket closes, nothing is said
    wait_for(lambda: agent.pid not in children(server), timeout=5)
    b2 = LabFollowBackend(lab, agents="warm")
    try:
        again = AgentClient(b2.start_agent("worker2", agent_argv("t-next", [CaptureSpec(interface="eth1", bpf="udp")])),
                            "worker2")
        assert again.wait_ready(10) == ["eth1"] and again.pid != agent.pid
        assert set(again.stop_and_collect(10)) == {"eth1"}
    finally:
        b2.close()


def test_the_thin_client_carries_the_protocol_as_a_kubernetes_exec_runs_it(lab):
    """`agent.py --via SOCKET ARGS` (what an exec into a warm agent's pod runs): the arguments
    go first, then stdin to the agent and its answer to stdout; EOF on stdin stops it."""
    veth = lab.pod("curl").host_veth
    argv = agent_argv("t-via", [CaptureSpec(interface=veth, bpf="udp port 9")])
    proc = lab.popen("worker1", [sys.executable, "-S", str(AGENT), "--via", str(lab.store.socket_path("worker1")), *argv],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    channel = LabAgentChannel(proc, tempfile.TemporaryFile())
    try:
        agent = AgentClient(channel, "worker1")
        assert agent.wait_ready(10) == [veth]
        assert "scapy" not in " ".join(cmdline_of(proc.pid))
        datagrams(lab, 3)
        proc.stdin.close()  # EOF: the agent's stop
        assert agent.collect(10)[veth].packets == 3
        assert proc.wait(5) == 0
    finally:
        channel.close()


def test_the_thin_client_says_when_no_warm_agent_listens(tmp_path):
    proc = subprocess.run([sys.executable, str(AGENT), "--via", str(tmp_path / "none.sock"), "--run-id", "x",
                           "--capture", "lo=udp"], capture_output=True, timeout=10)
    assert proc.returncode == 1
    event = json.loads(proc.stdout)
    assert event["event"] == "error" and "no warm capture agent answers at" in event["message"]
    assert "tracer agents install" in event["hint"]


def test_a_server_stopped_by_sigterm_lets_its_agents_send_their_pcaps_and_removes_its_socket(tmp_path):
    sock = tmp_path / "s" / "agent.sock"
    server = subprocess.Popen([sys.executable, str(AGENT), "--serve", str(sock)], stdout=subprocess.PIPE)
    try:
        assert json.loads(server.stdout.readline())["event"] == "serving"
        assert oct(sock.stat().st_mode & 0o777) == "0o600" and oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        client = subprocess.Popen([sys.executable, str(AGENT), "--via", str(sock), "--run-id", "x", "--capture", "lo=udp"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        channel = LabAgentChannel(client, tempfile.TemporaryFile())
        agent = AgentClient(channel, "here")
        agent.wait_ready(10)
        server.send_signal(signal.SIGTERM)
        assert set(agent.collect(10)) == {"lo"}  # (its agent got SIGTERM: drained, sent, done)
        assert server.wait(10) == 0 and not sock.exists()
        channel.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_warm_agent_given_arguments_it_does_not_take_says_so_on_the_connection(tmp_path):
    """An agent older than the tracer that asks: argparse's refusal would only reach the server's
    log; the client gets an error event that says what to do."""
    sock = tmp_path / "agent.sock"
    server = subprocess.Popen([sys.executable, str(AGENT), "--serve", str(sock)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        assert json.loads(server.stdout.readline())["event"] == "serving" and sock.is_socket()
        proc = subprocess.run([sys.executable, str(AGENT), "--via", str(sock), "--run-id", "x", "--capture", "lo=udp",
                               "--a-flag-of-tomorrow"], capture_output=True, timeout=20)
        event = json.loads(proc.stdout.splitlines()[0])
        assert event["event"] == "error" and "does not take the arguments" in event["message"]
        assert "tracer agents install" in event["hint"]
        assert server.poll() is None  # (the server serves on)
    finally:
        server.terminate()
        server.wait(10)
    assert not sock.exists()


def test_warm_only_where_none_runs_is_an_error_that_says_how_to_get_one(tmp_path):
    store = make_store("cold")
    lab = up(exercise(), store=store, warm_agents=False)
    try:
        assert lab.state.agents == {}
        with pytest.raises(NotFoundError, match="no warm capture agent runs on lab node worker1") as e:
            LabFollowBackend(lab, agents="warm").pod("curl")
        assert "tracer agents install" in e.value.hint
        b = LabFollowBackend(lab)  # auto: one for the run, as before
        b.pod("curl")
        assert b.warm_nodes == [] and isinstance(b._standby["worker1"], LabAgentChannel)
        b.close()
    finally:
        down(store)


def test_a_warm_agent_that_died_is_started_again_by_the_next_run(lab):
    state = lab.store.load()
    old = state.agents["worker2"]
    os.kill(old.pid, signal.SIGKILL)  # (the lab's own process: its PID from the lab's state)
    wait_for(lambda: not old.alive(), timeout=5)
    b = LabFollowBackend(lab)
    try:
        b.pod("httpbin")
        assert b.warm_nodes == ["worker2"]
    finally:
        b.close()
    new = lab.store.load().agents["worker2"]
    assert new.pid != old.pid and new.alive()


def test_a_warm_agent_of_older_code_is_started_anew_by_the_next_run(lab):
    """tracer updated while the lab is up: the warm agent runs the agent.py it was started from,
    which may not know today's arguments; the next run ends it and starts one of today's."""
    store = lab.store
    with store.locked():
        state = store.load()
        old = state.agents["worker1"]
        state.agent_code["worker1"] = "an-older-agent"
        store.save(state)
    b = LabFollowBackend(lab)
    try:
        b.pod("curl")
        assert b.warm_nodes == ["worker1"]
    finally:
        b.close()
    state = store.load()
    assert not old.alive() and state.agents["worker1"].pid != old.pid and state.agents["worker1"].alive()
    assert state.agent_code["worker1"] == state.agent_code["worker2"] != "an-older-agent"


def cmdline_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


@pytest.mark.parametrize("early", [True, False])
def test_stop_ends_as_soon_as_every_connection_has_closed_at_every_point(lab, either, early):
    # A long --linger shows which rule ended the drain: the closed connections, or the quiet.
    veth = lab.pod("curl").host_veth
    captures = {veth: "tcp port 80", "eth1": "udp port 4789 and udp[39]=6 and (udp[50:2]=80 or udp[52:2]=80)"}
    specs = [CaptureSpec(interface=i, bpf=f) for i, f in captures.items()]
    argv = agent_argv("t-early", specs) + ["--linger", "1.5"] + ([] if early else ["--no-early-stop"])
    agent = AgentClient(either.start_agent("worker1", argv), "worker1")
    agent.wait_ready(10)
    one_http_request(lab)
    time.sleep(0.1)  # the FIN/ACK tail is in by now: only the drain's own rule is timed
    t = time.monotonic()
    caps = agent.stop_and_collect(10)
    took = time.monotonic() - t
    assert caps[veth].packets == caps["eth1"].packets >= 8  # handshake, request, response, both FINs
    assert (took < 0.5) if early else (took >= 1.5)


def test_without_tcp_the_drain_waits_for_quiet(lab, either):
    veth = lab.pod("curl").host_veth
    argv = agent_argv("t-udp", [CaptureSpec(interface=veth, bpf="udp port 9")]) + ["--linger", "0.5"]
    agent = AgentClient(either.start_agent("worker1", argv), "worker1")
    agent.wait_ready(10)
    datagrams(lab, 2)
    t = time.monotonic()
    assert agent.stop_and_collect(10)[veth].packets == 2
    assert time.monotonic() - t >= 0.5


def agent_module():
    """capture-pod/agent.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("agent_under_test", os.path.join(
        os.path.dirname(__file__), "..", "capture-pod", "agent.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tcp_segment_finds_the_tcp_inside_vxlan():
    mod = agent_module()
    from factories import vxlan_syn_frame

    seg = mod.tcp_segment(mod.LINKTYPE_ETHERNET, vxlan_syn_frame())
    assert seg is not None and seg[4] & mod.TCP_SYN
    conns = mod.Connections()
    conns.see(mod.LINKTYPE_ETHERNET, vxlan_syn_frame())
    assert not conns.all_ended()


# --- VLAN tags ------------------------------------------------------------------------------------

@pytest.fixture
def veth_pair():
    """Two namespaces joined by a veth pair (v0 on both sides), removed whatever happens."""
    from conftest import SESSION_PREFIX
    from tracer.cluster.lab import netns

    a, b = f"{SESSION_PREFIX}vla", f"{SESSION_PREFIX}vlb"
    try:
        for cmd in (["ip", "netns", "add", a], ["ip", "netns", "add", b],
                    ["ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", b],
                    ["ip", "-n", a, "link", "set", "v0", "up"], ["ip", "-n", b, "link", "set", "v0", "up"]):
            subprocess.run(cmd, check=True)
        yield a, b
    finally:
        netns.delete([a, b])


@pytest.mark.parametrize("tags", ["802.1Q", "802.1ad+802.1Q"])
def test_vlan_tags_the_kernel_took_off_are_put_back(veth_pair, tmp_path, tags):
    # A tagged frame crosses the veth; the receiving kernel takes the (outer) tag off before any
    # packet socket sees the frame (it keeps it beside it): tcpdump puts it back, so must the agent,
    # with its own TPID (0x8100, or 0x88a8 for a QinQ service tag).
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

    a, b = veth_pair
    vlan = Dot1Q(vlan=10, prio=3) if tags == "802.1Q" else Dot1AD(vlan=20) / Dot1Q(vlan=10)
    frame = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / vlan
                  / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=4242, dport=9) / b"vlan")
    agent_py = os.path.join(os.path.dirname(__file__), "..", "capture-pod", "agent.py")
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, agent_py,
                             *agent_argv("t-vlan", [CaptureSpec(interface="v0", bpf="vlan and udp port 9" if "ad" in tags
                                                                 else "udp port 9")])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    channel = LabAgentChannel(proc, stderr)
    try:
        agent = AgentClient(channel, b)
        agent.wait_ready(20)
        send = (f"import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('v0', 0)); "
                f"s.send(bytes.fromhex('{frame.hex()}'))")
        subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", send], check=True)
        cap = agent.stop_and_collect(10)["v0"]
    finally:
        channel.close()
    (rec,) = frames(cap.pcap, tmp_path)
    assert rec.data == frame  # the tag (priority 3, VLAN 10) where it was, every byte as sent
    assert rec.orig_len == len(frame)


def test_the_kernel_filter_keeps_whole_frames():
    # libpcap compiles filters for 65,535 bytes: the kernel would cut GRO/BIG TCP
    # super-frames to that before the agent reads them (no MSG_TRUNC: a silently short frame).
    # The agent's filter, as the kernel holds it, accepts whole frames of up to FRAME_BUFFER.
    import ctypes

    a = agent_module()
    sniffer = a._open_sniffer("lo", "udp port 9", a._linktype("lo"))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        count = ctypes.c_uint(0)  # SO_GET_FILTER counts instructions, not bytes
        assert libc.getsockopt(sniffer.fileno(), 1, 26, None, ctypes.byref(count)) == 0
        buf = ctypes.create_string_buffer(8 * count.value)
        assert libc.getsockopt(sniffer.fileno(), 1, 26, buf, ctypes.byref(count)) == 0
    finally:
        sniffer.close()
    import struct

    insns = [struct.unpack_from("=HBBI", buf.raw, i) for i in range(0, 8 * count.value, 8)]
    accepts = [k for code, _, _, k in insns if code == 0x06 and k]
    assert accepts and set(accepts) == {a.FRAME_BUFFER} and a.FRAME_BUFFER > 65535
