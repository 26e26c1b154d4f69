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
from pathlib import Path
from typing import Any

import pytest
import yaml

from kmock_exec import (CAPTURE_NAMESPACE, ENDPOINTSLICES, NODES, SERVICES, V4, V5, StandIn, endpoint, endpoint_slice,
                        service)
from tracer.app.target import request_way, resolve
from tracer.app.watch import LIVE_MAX_SECONDS
from tracer.cluster.agents import AgentClient, AgentError, CaptureSpec, agent_argv
from tracer.cluster.discover import discover
from tracer.cluster.lab.topology import CLUSTER_DNS_IP, HTTPBIN_CLUSTER_IP
from tracer.errors import ClusterError, NotFoundError, PermissionError_, UsageError
from tracer.model import ServiceRef
from tracer.cluster.k8s.backend import KubernetesBackend, connect
from tracer.cluster.k8s import Cluster, ExecStream, run
from tracer.cluster.k8s.capture_pods import DEADLINE_MARGIN, DEFAULT_DEADLINE, MANAGED_BY, RUN_ID
from tracer.cluster.lab import Lab

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parent.parent


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


# -- Services: the API's Service and EndpointSlices, kube-proxy's rule from the node ----------------

def test_a_service_by_name_and_by_cluster_ip_is_the_labs(lab: Lab, backend: KubernetesBackend) -> None:
    httpbin = ServiceRef(name="httpbin", namespace="default", cluster_ip=HTTPBIN_CLUSTER_IP, port=80, target_port=80,
                         endpoints=("httpbin",))
    assert backend.service("httpbin") == httpbin == lab.backend().service("httpbin")
    assert backend.service("httpbin", "default") == httpbin
    assert backend.service("", cluster_ip=HTTPBIN_CLUSTER_IP) == httpbin
    # kube-dns: UDP 53 first, the TCP port is curl's; its pod is in kube-system, so named with it
    dns = ServiceRef(name="kube-dns", namespace="kube-system", cluster_ip=CLUSTER_DNS_IP, port=53, target_port=53,
                     endpoints=("kube-system/coredns",))
    assert backend.service("kube-dns", "kube-system") == dns
    assert backend.service("", cluster_ip=CLUSTER_DNS_IP) == dns  # (found in all namespaces)
    pod = backend.pod(dns.endpoints[0])  # what discovery does with an endpoint
    assert (pod.namespace, pod.name, pod.ip) == ("kube-system", "coredns", lab.pod("coredns").ip)


def test_endpoints_are_named_as_pod_takes_them_from_the_backends_namespace(standin: StandIn) -> None:
    with k8s_backend(standin, namespace="kube-system") as b:
        assert b.service("kube-dns").endpoints == ("coredns",)  # -n kube-system: the Service's and its pod's
        svc = b.service("httpbin", "default")
        assert svc.endpoints == ("default/httpbin",)
        assert b.pod(svc.endpoints[0]).namespace == "default"


def test_a_service_of_a_url_or_cluster_ip_resolves_to_its_endpoint_with_kube_proxys_rule(
        lab: Lab, standin: StandIn, backend: KubernetesBackend) -> None:
    on_lab = request_way(lab.backend(), "curl", "svc/httpbin", 80, "/get")
    for dst in ("svc/httpbin", "svc/default/httpbin", HTTPBIN_CLUSTER_IP,
                "http://httpbin.default.svc.cluster.local/get"):
        req = request_way(backend, "curl", dst, 80, "/get")
        assert req.way.to_dict() == on_lab.way.to_dict(), dst  # the rule too, read on worker1 by its capture pod
        assert req.way.service is not None and req.way.service.rule.startswith("KUBE-SVC-")
        assert req.port == 80
    node_reads = [argv for ns, _, argv in standin.snapshot()["exec"] if ns == CAPTURE_NAMESPACE]
    assert ("iptables-save", "-t", "nat") in node_reads
    by_name = request_way(backend, "curl", "http://httpbin/get", 80, "/")
    assert by_name.dns is not None and by_name.dns.way.dst.pod.name == "coredns"  # the DNS pod in kube-system
    assert by_name.dns.service.endpoints == ("kube-system/coredns",)


NFT_MODE_SAVE = (b"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Jan  1 00:00:00 2024\n*nat\n"
                 b":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
                 b"COMMIT\n# Completed on Mon Jan  1 00:00:00 2024\n")
"""What iptables-save prints where kube-proxy runs in nftables mode: no KUBE chains."""


@pytest.mark.parametrize("reply", [
    None,                                                         # no iptables-save in the capture image
    (1, b"", b"iptables-save v1.8.9 (legacy): Cannot initialize: Permission denied\n"),
    (0, NFT_MODE_SAVE, b""),                                      # kube-proxy in nftables mode
], ids=["missing", "fails", "nft-mode"])
def test_kube_proxys_rule_not_read_leaves_the_way_and_says_so(lab: Lab, standin: StandIn, backend: KubernetesBackend,
                                                             reply: tuple[int, bytes, bytes] | None) -> None:
    with standin.replying({("iptables-save", "-t", "nat"): reply}):
        req = request_way(backend, "curl", "svc/httpbin", 80, "/get")
    assert req.way.service is not None and req.way.service.rule == ""
    on_lab = request_way(lab.backend(), "curl", "svc/httpbin", 80, "/get").way
    assert [p.id for p in req.way.points] == [p.id for p in on_lab.points]
    assert req.way.dst.pod.name == "httpbin" and req.port == 80
    # (what the header says then: test_k8s_follow's follow with no iptables-save in the image)


@contextlib.contextmanager
def added(standin: StandIn, *objects: tuple[Any, dict]) -> Iterator[None]:
    """Services and EndpointSlices in the stand-in for one test."""
    for resource, obj in objects:
        standin.add(resource, obj)
    try:
        yield
    finally:
        for resource, obj in objects:
            standin.remove(resource, obj["metadata"]["namespace"], obj["metadata"]["name"])


def web_service(target_port: int | str = "web", **spec: Any) -> dict:
    svc = service("web", "default", "10.152.183.60",
                  [{"name": "stats", "protocol": "UDP", "port": 9125, "targetPort": 9125},
                   {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": target_port}])
    svc["spec"].update(spec)
    return svc


def test_a_named_target_port_is_the_endpoint_slices_number(standin: StandIn, backend: KubernetesBackend) -> None:
    ports = [{"name": "stats", "protocol": "UDP", "port": 9125}, {"name": "http", "protocol": "TCP", "port": 8000}]
    with added(standin, (SERVICES, web_service()), (ENDPOINTSLICES, endpoint_slice(
            "web-abcde", "default", "web", [endpoint("172.18.104.20", "web-1", "default", "worker2")], ports))):
        assert backend.service("web") == ServiceRef(name="web", namespace="default", cluster_ip="10.152.183.60",
                                                    port=8080, target_port=8000, endpoints=("web-1",))
        assert backend.service("", cluster_ip="10.152.183.60").target_port == 8000


def test_only_ready_pods_of_the_services_port_are_endpoints(standin: StandIn, backend: KubernetesBackend) -> None:
    http = [{"name": "http", "protocol": "TCP", "port": 8000}]
    external = endpoint("192.168.56.99", "x", "default", "worker1")
    del external["targetRef"]  # an address someone put in by hand: no pod to follow to
    node = endpoint("192.168.56.11", "worker1", "", "worker1") | {"targetRef": {"kind": "Node", "name": "worker1"}}
    unknown = endpoint("172.18.104.23", "web-4", "default", "worker2")
    del unknown["conditions"]  # ready unset: ready, as the API says
    with added(standin, (SERVICES, web_service()),
               (ENDPOINTSLICES, endpoint_slice("web-aaaaa", "default", "web", [
                   endpoint("172.18.104.20", "web-1", "default", "worker2"),
                   endpoint("172.18.104.21", "web-2", "default", "worker2", ready=False),  # (terminating, starting)
                   external, node, unknown], http)),
               (ENDPOINTSLICES, endpoint_slice("web-bbbbb", "default", "web", [
                   endpoint("172.18.104.22", "web-3", "default", "worker2"),
                   endpoint("172.18.104.20", "web-1", "default", "worker2")], http)),  # (in two slices a moment)
               (ENDPOINTSLICES, endpoint_slice("web-ccccc", "default", "web", [  # another port's pods only
                   endpoint("172.18.104.24", "web-5", "default", "worker2")],
                   [{"name": "metrics", "protocol": "TCP", "port": 9000}])),
               (ENDPOINTSLICES, endpoint_slice("other-aaaaa", "default", "other", [  # another Service's
                   endpoint("172.18.104.25", "web-6", "default", "worker2")], http))):
        svc = backend.service("web")
    assert svc.endpoints == ("web-1", "web-4", "web-3")
    assert svc.target_port == 8000


def test_a_service_without_endpoints_has_none_and_follow_says_so(standin: StandIn, backend: KubernetesBackend) -> None:
    with added(standin, (SERVICES, web_service(9090)), (ENDPOINTSLICES, endpoint_slice(
            "web-aaaaa", "default", "web", [endpoint("172.18.104.21", "web-2", "default", "worker2", ready=False)],
            [{"name": "http", "protocol": "TCP", "port": 9090}]))):
        assert backend.service("web").endpoints == ()
        with pytest.raises(NotFoundError) as e:
            resolve(backend, "svc/web", 80, "/")
    assert e.value.message == "Service default/web has no endpoints: no ready pod behind it to follow to"
    with added(standin, (SERVICES, web_service(9090))):  # no slice at all: the Service's own numbers
        assert backend.service("web") == ServiceRef(name="web", namespace="default", cluster_ip="10.152.183.60",
                                                    port=8080, target_port=9090, endpoints=())
    with added(standin, (SERVICES, web_service("web"))):  # a named port nothing resolves: the port's
        assert backend.service("web").target_port == 8080


def test_no_such_service_is_not_found_with_what_to_do(backend: KubernetesBackend) -> None:
    with pytest.raises(NotFoundError) as e:
        backend.service("nosuch")
    assert e.value.message == "no Service 'nosuch' in namespace 'default'"
    assert "kubectl get services -n default" in (e.value.hint or "")
    with pytest.raises(NotFoundError) as e:
        backend.service("httpbin", "team-a")
    assert e.value.message == "no Service 'httpbin' in namespace 'team-a'"
    with pytest.raises(NotFoundError) as e:
        backend.service("", cluster_ip="10.152.183.99")
    assert e.value.message == "no Service in the cluster has ClusterIP 10.152.183.99"
    assert "kubectl get services -A" in (e.value.hint or "")
    with pytest.raises(NotFoundError, match="no Service 'nosuch' in namespace 'default'"):
        resolve(backend, "http://nosuch/get", 80, "/")


def test_services_curl_cannot_reach_are_usage_errors(standin: StandIn, backend: KubernetesBackend) -> None:
    udp = service("statsd", "default", "10.152.183.61", [{"name": "stats", "protocol": "UDP", "port": 9125}])
    headless = service("db", "default", "None", [{"name": "pg", "protocol": "TCP", "port": 5432}])
    with added(standin, (SERVICES, udp), (SERVICES, headless)):
        with pytest.raises(UsageError) as e:
            backend.service("statsd")
        assert e.value.message == "Service default/statsd has no TCP port for curl"
        assert e.value.hint == "its ports: 9125/UDP"
        with pytest.raises(UsageError, match="Service default/db is headless"):
            backend.service("db")


@pytest.mark.parametrize("resource,verb,hint", [
    ("services", "get", "tracer needs get on services"),
    ("endpointslices", "list", "tracer needs list on endpointslices (API group discovery.k8s.io)"),
])
def test_a_forbidden_service_read_names_the_missing_rbac(standin: StandIn, backend: KubernetesBackend,
                                                         resource: str, verb: str, hint: str) -> None:
    with standin.forbidding(resource), pytest.raises(PermissionError_) as e:
        backend.service("httpbin")
    assert e.value.message.startswith("not allowed to ")
    assert f'User "tester" cannot {verb} resource "{resource}"' in e.value.message
    assert (e.value.hint or "").startswith(hint) and "manifests/rbac.yaml" in (e.value.hint or "")
    with standin.forbidding("services"), pytest.raises(PermissionError_) as e:
        backend.service("", cluster_ip=HTTPBIN_CLUSTER_IP)
    assert "cannot list resource \"services\"" in e.value.message and "at the cluster scope" in e.value.message
    assert (e.value.hint or "").startswith("tracer needs list on services")
    assert backend.service("httpbin").endpoints == ("httpbin",)  # (allowed again)


def test_the_rbac_manifest_lets_tracer_read_services_and_endpoint_slices() -> None:
    role = next(d for d in yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text())
                if d and d["kind"] == "ClusterRole")

    def verbs(group: str, resource: str) -> set[str]:
        return {v for r in role["rules"] if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}

    assert verbs("", "services") == {"get", "list"}
    assert verbs("discovery.k8s.io", "endpointslices") == {"get", "list"}
    assert verbs("", "endpointslices") == set()  # (not the core group: RBAC would not match it)
    assert verbs("", "pods") == {"get", "list"} and verbs("", "nodes") == {"get", "list"}  # (the rest kept)


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
