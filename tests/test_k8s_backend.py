"""The Kubernetes backend through the real client against a stand-in API server over the lab.

The stand-in (tests/kmock_exec.py) is kmock's Kubernetes emulator with the exec websocket added:
commands run in the lab's namespaces, so what the backend reads is the kernel's real state and
`discover` through Kubernetes must see exactly what it sees through the lab.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kmock_exec import CAPTURE_NAMESPACE, NODES, V4, V5, StandIn
from tracer.app.watch import LIVE_MAX_SECONDS
from tracer.cluster.agents import AgentClient, AgentError, CaptureSpec, agent_argv
from tracer.cluster.discover import discover
from tracer.errors import ClusterError, NotFoundError, UsageError
from tracer.cluster.k8s.backend import KubernetesBackend, connect
from tracer.cluster.k8s import Cluster, ExecStream, run
from tracer.cluster.k8s.capture_pods import DEADLINE_MARGIN, DEFAULT_DEADLINE, MANAGED_BY, RUN_ID
from tracer.cluster.lab import Lab

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def standin(lab: Lab) -> Iterator[StandIn]:
    with StandIn(lab) as s:
        yield s


@contextlib.contextmanager
def k8s_backend(standin: StandIn, **options: Any) -> Iterator[KubernetesBackend]:
    """A backend for one run against the stand-in, closed (capture pods deleted) afterwards."""
    b = connect(kubeconfig=str(standin.kubeconfig), **options)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def backend(standin: StandIn) -> Iterator[KubernetesBackend]:
    with k8s_backend(standin) as b:
        yield b


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def capture_pods(standin: StandIn) -> list[str]:
    return sorted(p["metadata"]["name"] for p in standin.pods(CAPTURE_NAMESPACE))


# -- exec: bytes, exit codes, both channel protocols ------------------------------------------

@pytest.fixture(scope="module", params=[V5, V4])
def protocol_standin(request: pytest.FixtureRequest, lab: Lab) -> Iterator[StandIn]:
    with StandIn(lab, protocols=(request.param,)) as s:
        yield s


def test_exec_returns_bytes_intact_and_exit_codes(protocol_standin: StandIn) -> None:
    cluster = Cluster(kubeconfig=str(protocol_standin.kubeconfig))
    blob = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 2000); sys.stderr.write('done'); sys.exit(3)"
    res = run(cluster, namespace="default", pod="curl", container="curl", argv=["python3", "-c", blob])
    assert res.returncode == 3
    assert res.stdout == bytes(range(256)) * 2000  # 512 kB across many frames, not a byte changed
    assert res.stderr == b"done"
    ok = run(cluster, namespace="default", pod="curl", container="curl", argv=["cat", "/sys/class/net/eth0/address"])
    assert (ok.returncode, ok.stdout) == (0, f"{protocol_standin.lab.pod('curl').mac}\n".encode())
    missing = run(cluster, namespace="default", pod="curl", container="curl", argv=["no-such-tool"])
    assert missing.returncode == 127 and b"executable file not found" in missing.stderr


def test_exec_stream_carries_stdin_and_stdout_both_ways(protocol_standin: StandIn) -> None:
    cluster = Cluster(kubeconfig=str(protocol_standin.kubeconfig))
    s = ExecStream(cluster, namespace="default", pod="curl", container="curl", argv=["cat"], stdin=True)
    try:
        assert s.protocol == protocol_standin.protocols[0]
        payload = b"stop\n" + bytes(range(256)) * 64
        s.write(payload)
        got = bytearray()
        while len(got) < len(payload) and s.is_open():
            s.pump(5)
            got += s.stdout
            s.stdout.clear()
        assert bytes(got) == payload
        if s.protocol == V5:
            assert s.close_stdin()  # v5: EOF on stdin, cat ends on its own with status 0
            assert s.wait(10) == 0
        else:
            assert not s.close_stdin()  # v4 cannot say EOF: ending the stream is the only way
    finally:
        s.release()


# -- the milestone: discovery through Kubernetes sees what it sees in the lab -----------------

def test_discover_through_kubernetes_equals_lab(lab: Lab, standin: StandIn, backend: KubernetesBackend) -> None:
    way = discover(backend, "curl", "httpbin")
    assert way.to_dict() == discover(lab.backend(), "curl", "httpbin").to_dict()
    assert [p.id for p in way.points] == [
        "worker1/cali35e3a5cb80b", "worker1/vxlan.calico", "worker1/eth1",
        "worker2/eth1", "worker2/vxlan.calico", f"worker2/{lab.pod('httpbin').host_veth}",
    ]
    # node state came from the capture pods, pod state from the app containers
    log = standin.handler.exec_log if standin.handler else []
    assert {pod for ns, pod, _ in log if ns == CAPTURE_NAMESPACE} == set(backend.capture_pods.names())
    assert ("default", "curl", ("cat", "/sys/class/net/eth0/iflink", "/sys/class/net/eth0/address",
                                "/sys/class/net/eth0/mtu", "/proc/net/route", "/proc/net/arp")) in log


def test_pods_may_name_their_namespace_as_kubectl_takes_them(standin: StandIn, backend: KubernetesBackend) -> None:
    """[NAMESPACE/]POD: each end its own namespace (a cross-namespace pair), -n for the rest."""
    way = discover(backend, "default/curl", "httpbin")
    assert (way.src.pod.namespace, way.src.pod.name, way.dst.pod.namespace) == ("default", "curl", "default")
    with pytest.raises(NotFoundError) as e:
        backend.pod("team-a/curl")
    assert e.value.message == "no pod 'curl' in namespace 'team-a'"
    for bad in ("team-a/", "/curl", "a/b/curl"):
        with pytest.raises(UsageError, match="not \\[NAMESPACE/\\]POD"):
            backend.pod(bad)


# -- capture pods ------------------------------------------------------------------------------

def test_capture_pods_have_the_spec_and_go_with_close(standin: StandIn) -> None:
    b = connect(kubeconfig=str(standin.kubeconfig), run_id="feedbeef")
    try:
        res = b.exec_node("worker2", ["ip", "-j", "link", "show", "vxlan.calico"])
        assert res.returncode == 0 and b'"ifname":"vxlan.calico"' in res.stdout  # the node's own namespace
        pods = {p["metadata"]["name"]: p for p in standin.pods(CAPTURE_NAMESPACE)}
        (name,) = [n for n, p in pods.items() if p["metadata"]["labels"][RUN_ID] == "feedbeef"]
        pod = pods[name]
        spec, container = pod["spec"], pod["spec"]["containers"][0]
        assert pod["metadata"]["labels"][MANAGED_BY] == "tracer"
        assert spec["nodeName"] == "worker2" and spec["hostNetwork"] is True
        assert spec["tolerations"] == [{"operator": "Exists"}]
        assert spec["activeDeadlineSeconds"] > 0 and spec["restartPolicy"] == "Never"
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"] == "localhost:32000/tracer-capture:0.1"
    finally:
        b.close()
        b.close()  # idempotent
    assert not [p for p in standin.pods(CAPTURE_NAMESPACE) if p["metadata"]["labels"][RUN_ID] == "feedbeef"]


def test_start_agent_streams_through_the_capture_pod(standin: StandIn, backend: KubernetesBackend) -> None:
    # Until the agent's own tests run here, a stand-in agent: the protocol's shape over the same path.
    # (Text then bytes: flushed between, or without PYTHONUNBUFFERED the bytes come first.)
    standin_agent = ("import sys; l = sys.stdin.readline(); sys.stdout.write('{\"event\":\"done\",\"got\":%r}\\n' % l);"
                     " sys.stdout.flush(); sys.stdout.buffer.write(bytes(range(256)))")
    stream = ExecStream(backend.cluster, namespace=CAPTURE_NAMESPACE, pod=backend.capture_pods.ready("worker1"),
                        container=None, argv=["python3", "-c", standin_agent], stdin=True)
    from tracer.cluster.k8s import ExecChannel

    channel = ExecChannel(stream)
    try:
        channel.write(b"stop\n")
        data = b""
        while True:
            chunk = channel.read(4096, timeout=10)
            if not chunk:
                break
            data += chunk
        assert data.endswith(bytes(range(256))) and data.startswith(b'{"event":"done","got":\'stop\\n\'}\n')
        assert channel.exit_status() == 0
        with pytest.raises(TimeoutError):
            ExecChannel(ExecStream(backend.cluster, namespace=CAPTURE_NAMESPACE,
                                   pod=backend.capture_pods.ready("worker1"), container=None,
                                   argv=["sleep", "5"], stdin=True)).read(1, timeout=0.2)
    finally:
        channel.close()


# -- the capture agent in its pod: its end, its pod's deadline --------------------------------------

def start_agent(backend: KubernetesBackend, node: str, **argv: Any) -> AgentClient:
    """The real agent (capture-pod/agent.py) on `node`'s eth1, started as a follow or watch starts it."""
    specs = [CaptureSpec(interface="eth1", bpf="udp port 9")]
    agent = AgentClient(backend.start_agent(node, agent_argv(backend.run_id, specs, **argv)), node, backend.run_id)
    agent.wait_ready(30)
    return agent


def deadlines(standin: StandIn, run_id: str) -> dict[str, int]:
    """activeDeadlineSeconds of the run's capture pods, by name."""
    return {p["metadata"]["name"]: p["spec"]["activeDeadlineSeconds"] for p in standin.pods(CAPTURE_NAMESPACE)
            if p["metadata"]["labels"][RUN_ID] == run_id}


def test_an_agent_killed_before_stop_is_told_as_killed_with_its_pods_deadline(backend: KubernetesBackend) -> None:
    agent = start_agent(backend, "worker1")
    assert agent.pid is not None
    os.kill(agent.pid, signal.SIGKILL)  # as the kubelet does at the pod's deadline, or the OOM killer
    assert wait_for(lambda: agent.channel.exit_status() is not None, 10)

    def write_fails() -> bool:  # (the first write after the server's close may still leave)
        try:
            agent.channel.write(b"\n")
        except ClusterError as e:
            return "the exec stream is closed" in e.message
        return False

    assert wait_for(write_fails, 5)  # what the stop meets now
    agent.send_stop()  # no error of its own: how the agent ended is collect()'s to tell
    with pytest.raises(AgentError) as e:
        agent.collect(10)
    assert e.value.message == (f"the capture agent on worker1 was killed (exit 137) before its captures: its pod's "
                               f"deadline (activeDeadlineSeconds {DEFAULT_DEADLINE} s) passed, or the node ran out "
                               f"of memory")


def test_an_agent_that_stopped_by_itself_before_stop_still_gives_its_captures(backend: KubernetesBackend) -> None:
    agent = start_agent(backend, "worker1", max_seconds=0.5)
    assert wait_for(lambda: agent.channel.exit_status() is not None, 10)  # --max-seconds: it stopped, exit 0
    agent.send_stop()
    caps = agent.collect(10)
    assert list(caps) == ["eth1"] and caps["eth1"].packets == 0
    assert agent.channel.exit_status() == 0


def test_a_watch_agent_runs_in_a_pod_whose_deadline_covers_it(standin: StandIn) -> None:
    with k8s_backend(standin, run_id="5ca1ab1e") as b:
        b.exec_node("worker1", ["true"])  # discovery: a pod with the short deadline, as a safety net
        first = b.capture_pods.ready("worker1")
        assert deadlines(standin, b.run_id) == {first: DEFAULT_DEADLINE}
        follow = start_agent(b, "worker2")  # a follow's agent (300 s at most): the short deadline does
        watch = start_agent(b, "worker1", max_seconds=LIVE_MAX_SECONDS, stream=True)  # `tracer watch`'s
        lasting = LIVE_MAX_SECONDS + DEADLINE_MARGIN
        pods = deadlines(standin, b.run_id)
        assert pods == {b.capture_pods.ready("worker1"): lasting, b.capture_pods.ready("worker2"): DEFAULT_DEADLINE}
        assert first not in pods  # replaced, not left behind
        assert (watch.channel.pod_deadline, follow.channel.pod_deadline) == (lasting, DEFAULT_DEADLINE)
        for agent in (watch, follow):
            agent.send_stop()
            assert list(agent.collect(10)) == ["eth1"]
    assert deadlines(standin, "5ca1ab1e") == {}


def test_deleting_a_capture_pod_ends_what_runs_in_it(standin: StandIn) -> None:
    b = connect(kubeconfig=str(standin.kubeconfig))
    name = b.capture_pods.ready("worker1")
    stream = ExecStream(b.cluster, namespace=CAPTURE_NAMESPACE, pod=name, container=None, argv=["sleep", "30"], stdin=True)
    try:
        assert wait_for(lambda: standin.process_count() >= 1)  # the handshake comes before the spawn
        b.close()
        assert stream.wait(10) == 137  # killed with its pod, as a container runtime does
        assert standin.process_count() == 0
    finally:
        stream.release()
        b.close()


def test_stale_capture_pods_of_ended_runs_are_swept(standin: StandIn) -> None:
    old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def pod(name: str, run: str, phase: str, created: str) -> dict:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": CAPTURE_NAMESPACE, "creationTimestamp": created,
                             "labels": {MANAGED_BY: "tracer", RUN_ID: run}},
                "spec": {"nodeName": "worker1", "hostNetwork": True, "activeDeadlineSeconds": 900,
                         "containers": [{"name": "capture", "image": "x"}]},
                "status": {"phase": phase}}

    standin.add_pod(pod("tracer-cap-dead-1", "dead", "Failed", now))          # ended by its deadline
    standin.add_pod(pod("tracer-cap-old-1", "old", "Running", old))            # far past its deadline
    standin.add_pod(pod("tracer-cap-busy-1", "busy", "Running", now))          # another run, still going
    try:
        with k8s_backend(standin):  # sweeps when it starts
            left = capture_pods(standin)
        assert "tracer-cap-busy-1" in left
        assert "tracer-cap-dead-1" not in left and "tracer-cap-old-1" not in left
    finally:
        Cluster(kubeconfig=str(standin.kubeconfig)).core.delete_namespaced_pod("tracer-cap-busy-1", CAPTURE_NAMESPACE)


# -- errors a person can act on -----------------------------------------------------------------

def test_missing_and_unready_pods_are_clear_errors(standin: StandIn, backend: KubernetesBackend) -> None:
    with pytest.raises(NotFoundError) as e:
        backend.pod("nginx")
    assert "no pod 'nginx' in namespace 'default'" in e.value.message and "-n/--namespace" in (e.value.hint or "")
    standin.add_pod({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "starting", "namespace": "default"},
                     "spec": {"nodeName": "worker1", "containers": [{"name": "app", "image": "x"}]},
                     "status": {"phase": "Pending", "containerStatuses": [
                         {"name": "app", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                          "state": {"waiting": {"reason": "ContainerCreating"}}}]}})
    with pytest.raises(ClusterError) as e:
        backend.pod("starting")
    assert e.value.message == "pod default/starting is Pending (ContainerCreating), not Running"


def test_missing_capture_namespace_points_at_the_manifests(standin: StandIn) -> None:
    with k8s_backend(standin, capture_namespace="nowhere") as b, pytest.raises(NotFoundError) as e:
        b.exec_node("worker1", ["true"])
    assert "namespace 'nowhere' does not exist" in e.value.message
    assert "kubectl apply -f manifests/" in (e.value.hint or "")
    with k8s_backend(standin) as b, pytest.raises(NotFoundError, match="no node 'worker9'"):
        b.exec_node("worker9", ["true"])


def test_capture_pods_that_cannot_run_say_why(standin: StandIn) -> None:
    with k8s_backend(standin, capture_image="unpullable/tracer-capture:0") as b, pytest.raises(ClusterError) as e:
        b.exec_node("worker1", ["true"])
    assert "cannot get image unpullable/tracer-capture:0: ErrImagePull" in e.value.message
    assert "capture-pod/README.md" in (e.value.hint or "")
    standin.call(lambda: standin.handler.objects.__setitem__((NODES, None, "worker3"), {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker3"},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]}}))
    with k8s_backend(standin) as b, pytest.raises(ClusterError, match="node worker3 is not Ready"):
        b.exec_node("worker3", ["true"])
    assert capture_pods(standin) == []
