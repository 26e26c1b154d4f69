"""The capture agent (capture-pod/agent.py) and its protocol, on the lab's real interfaces.

The agent runs as `tracer follow` runs it (LabFollowBackend.start_agent) and is spoken to through
the same client (AgentClient), so these tests pin the protocol both backends rely on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tracer.follow.agent_protocol import AgentClient, AgentError, CaptureSpec, agent_argv
from tracer.follow.lab_backend import LabFollowBackend
from tracer.pcapio import open_capture

pytestmark = [pytest.mark.root]

PCAP_NANO_MAGIC = b"\x4d\x3c\xb2\xa1"  # 0xa1b23c4d, little-endian


@pytest.fixture
def backend(lab):
    b = LabFollowBackend(lab)
    yield b
    b.close()
    assert all(c.exit_status() is not None for c in b.channels)


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


def test_the_kernel_filter_keeps_only_what_it_matches(lab, backend):
    veth = lab.pod("curl").host_veth
    agent = start(backend, "worker1", {veth: "tcp port 80"})
    agent.wait_ready(10)
    datagrams(lab)
    assert agent.stop_and_collect(10)[veth].packets == 0


def test_stream_mode_sends_each_frame_as_it_is_captured(lab, backend):
    veth = lab.pod("curl").host_veth
    agent = start(backend, "worker1", {veth: "udp port 9"}, stream=True)
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
def test_errors_are_events_with_a_message(lab, backend, captures, words):
    agent = start(backend, "worker1", captures)
    with pytest.raises(AgentError, match=words):
        agent.wait_ready(10)
    assert agent.channel.proc.wait(5) == 1


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


def test_max_seconds_stops_it_by_itself(lab, backend):
    agent = start(backend, "worker1", {"eth1": "udp port 4789"}, max_seconds=0.3)
    agent.wait_ready(10)
    assert set(agent.collect(5)) == {"eth1"}
    assert agent.channel.proc.wait(5) == 0


def test_close_ends_an_agent_that_ignores_everything(lab, tmp_path):
    # A stuck agent (here: `sleep`, which never reads stdin) is ended by SIGTERM after the grace.
    b = LabFollowBackend(lab, python="/bin/sh", agent=tmp_path / "stuck.sh")
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
