"""The Kubernetes adapter's edges without a cluster: errors, exit statuses, kubeconfig rules,
capture pod spec, and the manifests and image the backend relies on."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import urllib3
import yaml
from kubernetes.client.rest import ApiException

from tracer.app.curl import fire
from tracer.errors import ClusterError, NotFoundError, PermissionError_, UsageError
from tracer.cluster.k8s.backend import AGENT, KubernetesBackend
from tracer.cluster.k8s import Cluster, ExecStream, api_error, api_errors, exit_status
from tracer.cluster.k8s.capture_pods import DEFAULT_NAMESPACE, MANAGED_BY, RUN_ID, manifest, pod_name
from tracer.model import PodRef

REPO = Path(__file__).resolve().parent.parent


def status_body(code: int, message: str, reason: str = "Forbidden") -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                       "reason": reason, "code": code})


# -- exit status from the Status object on channel 3 -------------------------------------------

def internal_error(message: str) -> dict:
    """The Status a kubelet sends on channel 3 when the command could not even start."""
    msg = f"error executing command in container: {message}"
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {msg}",
            "reason": "InternalError", "details": {"causes": [{"message": msg}]}, "code": 500}


RUNC = "failed to exec in container: failed to start exec \"4f1c\": OCI runtime exec failed: exec failed: "
MISSING_CURL = RUNC + 'unable to start container process: exec: "curl": executable file not found in $PATH: unknown'
CONTAINER_GONE = 'container not found ("curl")'


@pytest.mark.parametrize("status,code", [
    ({"metadata": {}, "status": "Success"}, 0),
    ({"status": "Failure", "reason": "NonZeroExitCode",
      "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}}, 2),
    ({"status": "Failure", "reason": "InternalError", "message": 'exec: "ip": executable file not found in $PATH',
      "details": {"causes": [{"message": 'exec: "ip": executable file not found in $PATH'}]}}, 127),
    (internal_error(MISSING_CURL), 127),
    (internal_error(RUNC + 'unable to start container process: exec: "/usr/bin/curl": stat /usr/bin/curl: '
                           "no such file or directory: unknown"), 127),
    (internal_error(RUNC + "unable to start container process: exec /agent.py: no such file or directory"), 127),
    (internal_error("crun: executable file `curl` not found in $PATH: No such file or directory: "
                    "OCI runtime attempted to invoke a command that was not found"), 127),
    (internal_error(RUNC + 'unable to start container process: exec: "/agent.py": permission denied: unknown'), 126),
])
def test_exit_status_from_the_status_channel(status: dict, code: int) -> None:
    got, why = exit_status(json.dumps(status).encode())
    assert got == code
    assert (why == "") == (code in (0, 2))


@pytest.mark.parametrize("message", [
    CONTAINER_GONE,                                                          # the container ended or restarts
    "failed to exec in container: container is in CONTAINER_EXITED state",
    "rpc error: code = Unknown desc = failed to dial: dial unix /run/containerd/containerd.sock: "
    "connect: no such file or directory",                                    # no such file: not the command
])
def test_a_command_that_could_not_start_for_another_reason_is_no_exit_code(message: str) -> None:
    with pytest.raises(ClusterError) as e:
        exit_status(json.dumps(internal_error(message)).encode(), what="`curl -s x` in pod default/curl",
                    namespace="default", pod="curl")
    assert e.value.message == f"`curl -s x` in pod default/curl could not run: Internal error occurred: " \
                              f"error executing command in container: {message}"
    assert (e.value.hint or "").endswith("kubectl describe pod -n default curl")


def test_no_status_at_all_is_an_error() -> None:
    with pytest.raises(ClusterError, match="without an exit status"):
        exit_status(b"")


# -- exec against a server of the test's own (a socket, speaking just enough HTTP) -----------------

@contextlib.contextmanager
def api_server(answer: Callable[[socket.socket, bytes], None]) -> Iterator[str]:
    """A TCP server on 127.0.0.1 (its URL) that reads each request's head and hands the connection
    to `answer`; every connection stays open until the end."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.05)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                head += chunk
            answer(conn, head)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in conns:
            conn.close()
        srv.close()


def ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")) + payload


def exec_answering(status: dict) -> Callable[[socket.socket, bytes], None]:
    """An exec endpoint (v4.channel.k8s.io) whose command ends at once with this Status on channel 3."""
    def answer(conn: socket.socket, head: bytes) -> None:
        m = re.search(rb"(?i)^sec-websocket-key: *(\S+)", head, re.MULTILINE)
        assert m, head
        accept = base64.b64encode(hashlib.sha1(m.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n")
        conn.sendall(ws_frame(0x2, b"\x03" + json.dumps(status).encode()) + ws_frame(0x8, b"\x03\xe8"))
    return answer


def curl_from(url: str, tmp_path: Path) -> Callable[[], object]:
    """`tracer follow`'s request (app.curl.fire) from pod default/curl through the exec at `url`."""
    backend = KubernetesBackend(Cluster(kubeconfig=str(kubeconfig(tmp_path / "config", url))),
                                capture_image="img", capture_namespace="cap", run_id="r1")
    src = PodRef(name="curl", namespace="default", node="worker1", ip="10.0.0.1")
    return lambda: fire(backend, SimpleNamespace(src=SimpleNamespace(pod=src)), "http://10.0.0.2/get", 1.0)


def test_a_pod_without_curl_is_said_so_and_a_gone_container_is_not(tmp_path: Path) -> None:
    with api_server(exec_answering(internal_error(MISSING_CURL))) as url, \
            pytest.raises(NotFoundError, match="pod curl has no curl to send the request with"):
        curl_from(url, tmp_path)()
    with api_server(exec_answering(internal_error(CONTAINER_GONE))) as url, pytest.raises(ClusterError) as e:
        curl_from(url, tmp_path)()
    assert not isinstance(e.value, NotFoundError)
    assert e.value.message.startswith("`curl -s -o /dev/null")
    assert e.value.message.endswith(f" in pod default/curl could not run: Internal error occurred: "
                                    f"error executing command in container: {CONTAINER_GONE}")
    assert (e.value.hint or "").endswith("kubectl describe pod -n default curl")


def test_an_api_server_that_never_answers_the_exec_upgrade_is_an_error_in_time(tmp_path: Path) -> None:
    """It takes the connection and reads the upgrade request, but says nothing (as a stuck proxy)."""
    raised: list[BaseException] = []

    def exec_true(cluster: Cluster) -> None:
        try:
            ExecStream(cluster, namespace="default", pod="curl", container="curl", argv=["true"], stdin=False,
                       handshake_timeout=0.5)
        except BaseException as e:  # noqa: BLE001 - looked at below
            raised.append(e)

    with api_server(lambda conn, head: None) as url:
        started = time.monotonic()
        cluster = Cluster(kubeconfig=str(kubeconfig(tmp_path / "config", url)))
        worker = threading.Thread(target=exec_true, args=(cluster,))
        worker.start()
        worker.join(10)  # (else the end of api_server closes the connection: the exec fails then, too late)
        took = time.monotonic() - started
    assert 0.5 <= took < 3, f"the exec waited {took:.1f} s for an answer"
    worker.join(5)
    (e,) = raised
    assert isinstance(e, ClusterError), repr(e)
    assert e.message == "the API server did not answer the exec `true` in pod default/curl within 0.5 s"
    assert "websocket" in (e.hint or "")


# -- ApiException -> TracerError ----------------------------------------------------------------

def test_forbidden_points_at_the_rbac() -> None:
    e = api_error(ApiException(status=403, reason="Forbidden", body=status_body(
        403, 'pods "curl" is forbidden: User "bob" cannot create resource "pods/exec"')), "exec in pod default/curl")
    assert isinstance(e, PermissionError_)
    assert e.message == ('not allowed to exec in pod default/curl: pods "curl" is forbidden: '
                         'User "bob" cannot create resource "pods/exec"')
    assert "kubectl apply -f manifests/" in (e.hint or "")


def test_pod_security_refusal_points_at_the_namespace_label() -> None:
    e = api_error(ApiException(status=403, body=status_body(
        403, 'pods "tracer-cap-x" is forbidden: violates PodSecurity "baseline:latest": host namespaces')),
        "create capture pod")
    assert isinstance(e, PermissionError_) and "pod-security.kubernetes.io/enforce=privileged" in (e.hint or "")


@pytest.mark.parametrize("exc,kind,text", [
    (ApiException(status=404, body=status_body(404, 'pods "nginx" not found', "NotFound")), NotFoundError,
     'pods "nginx" not found'),
    (ApiException(status=401, reason="Unauthorized", body=status_body(401, "Unauthorized", "Unauthorized")),
     PermissionError_, "credentials"),
    (ApiException(status=500, body=status_body(500, "etcdserver: request timed out", "InternalError")),
     ClusterError, "(500): etcdserver: request timed out"),
    (ApiException(status=0, reason="Handshake status 403 Forbidden -+-+- {'content-type': 'application/json'} -+-+- "
                  + status_body(403, 'pods "curl" is forbidden: cannot create pods/exec')),
     PermissionError_, 'pods "curl" is forbidden: cannot create pods/exec'),
    (ApiException(status=0, reason="Handshake status 404 Not Found -+-+- {} -+-+- "  # older websocket-client
                  + repr(status_body(404, 'pods "gone" not found', "NotFound").encode())),
     NotFoundError, 'pods "gone" not found'),
    (urllib3.exceptions.MaxRetryError(None, "/api/v1", reason="Connection refused"), ClusterError, "cannot reach"),
])
def test_api_errors_become_tracer_errors(exc: Exception, kind: type, text: str) -> None:
    with pytest.raises(kind) as e:
        with api_errors("do it"):
            raise exc
    assert text in e.value.message and e.value.hint is not None or kind is ClusterError


def test_ctrl_c_the_stream_client_wrapped_is_given_back() -> None:
    with pytest.raises(KeyboardInterrupt):
        with api_errors("exec"):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as e:  # what kubernetes.stream.ws_client.websocket_call does
                raise ApiException(status=0, reason=str(e))


# -- kubeconfig rules ---------------------------------------------------------------------------

def kubeconfig(path: Path, server: str = "http://127.0.0.1:1") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "one",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                     {"name": "two", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def test_namespace_comes_from_flag_then_context_then_default(tmp_path: Path) -> None:
    kc = str(kubeconfig(tmp_path / "config"))
    assert Cluster(kubeconfig=kc).namespace == "team-a"
    assert Cluster(kubeconfig=kc, context="two").namespace == "default"
    assert Cluster(kubeconfig=kc, context="one", namespace="x").namespace == "x"
    assert Cluster(kubeconfig=kc).server == "http://127.0.0.1:1"


def test_kubeconfig_env_may_list_several_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kc = kubeconfig(tmp_path / "config")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{kc}")
    assert Cluster().namespace == "team-a"


def test_kubeconfig_problems_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UsageError) as e:
        Cluster(kubeconfig=str(tmp_path / "nope"))
    assert "--kubeconfig" in (e.value.hint or "")
    with pytest.raises(UsageError) as e:
        Cluster(kubeconfig=str(kubeconfig(tmp_path / "config")), context="three")
    assert e.value.hint == "contexts: one, two"


@pytest.mark.parametrize("text", ["hello world\n", "- a\n- b\n", "apiVersion: v1\nclusters: 7\n"])
def test_a_file_that_is_no_kubeconfig_is_a_usage_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "config").write_text(text)
    with pytest.raises(UsageError) as e:
        Cluster(kubeconfig=str(tmp_path / "config"))
    assert "is not a kubeconfig" in e.value.message or "cannot use the kubeconfig" in e.value.message


def test_follow_with_an_unreachable_api_server_says_so_not_what_cleanup_then_could_not_do(tmp_path: Path) -> None:
    from tracer.cluster.k8s.backend import connect

    with pytest.raises(ClusterError) as e:
        connect(kubeconfig=str(kubeconfig(tmp_path / "config")))
    assert e.value.message.startswith("cannot reach the Kubernetes API to list capture pods"), e.value.message


def test_an_unreachable_api_server_is_a_cluster_error(tmp_path: Path) -> None:
    cluster = Cluster(kubeconfig=str(kubeconfig(tmp_path / "config")))
    cluster.configuration.retries = 0
    with pytest.raises(ClusterError) as e:
        Cluster.pod(cluster, "curl")
    assert e.value.message.startswith("cannot reach the Kubernetes API to get pod team-a/curl")


# -- capture pods, manifests, image ---------------------------------------------------------------

@pytest.mark.parametrize("node", ["worker1", "ip-10-0-0-1.eu-west-1.compute.internal", "Node_With.UPPER" * 8])
def test_capture_pod_names_are_valid_for_any_node(node: str) -> None:
    name = pod_name("0123abcd", node)
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert name != pod_name("0123abcd", node + "x")


def test_capture_pod_spec() -> None:
    pod = manifest(name="n", namespace=DEFAULT_NAMESPACE, node="worker1", run_id="r1", image="img", deadline=600)
    spec, c = pod["spec"], pod["spec"]["containers"][0]
    assert pod["metadata"]["labels"][MANAGED_BY] == "tracer" and pod["metadata"]["labels"][RUN_ID] == "r1"
    assert (spec["nodeName"], spec["hostNetwork"], spec["activeDeadlineSeconds"]) == ("worker1", True, 600)
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert not c["securityContext"]["privileged"] and not c["securityContext"]["allowPrivilegeEscalation"]


def load_yaml(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_manifests_give_the_capture_namespace_and_the_verbs_the_backend_uses() -> None:
    docs = [d for p in sorted((REPO / "manifests").glob("*.yaml")) for d in load_yaml(p)]
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["name"] == DEFAULT_NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"

    def verbs(kind: str, resource: str) -> set[str]:
        role = next(d for d in docs if d["kind"] == kind)
        return {v for r in role["rules"] if resource in r["resources"] for v in r["verbs"]}

    assert verbs("ClusterRole", "pods") == {"get", "list"}
    assert verbs("ClusterRole", "pods/exec") == {"get", "create"}
    assert verbs("ClusterRole", "nodes") == {"get", "list"}
    assert verbs("Role", "pods") == {"get", "list", "create", "delete"}
    assert verbs("Role", "pods/exec") == {"get", "create"}
    assert next(d for d in docs if d["kind"] == "Role")["metadata"]["namespace"] == DEFAULT_NAMESPACE


def test_exercise_pods_take_the_node_names_as_parameters() -> None:
    text = (REPO / "manifests" / "exercise" / "pods.yaml").read_text()
    filled = text.replace("${NODE1}", "worker1").replace("${NODE2}", "worker2")
    pods = {d["metadata"]["name"]: d for d in yaml.safe_load_all(filled) if d}
    assert {n: p["spec"]["nodeName"] for n, p in pods.items()} == {"curl": "worker1", "httpbin": "worker2"}
    assert pods["curl"]["spec"]["containers"][0]["image"] == "curlimages/curl"


def test_the_image_runs_the_agent_where_the_backend_execs_it() -> None:
    dockerfile = (REPO / "capture-pod" / "Dockerfile").read_text()
    assert f"COPY agent.py {AGENT[1]}" in dockerfile
    assert json.dumps(AGENT) in dockerfile  # ENTRYPOINT ["python3", "/agent.py"]
    assert "iproute2" in dockerfile and "libpcap" in dockerfile and "scapy" in dockerfile
    assert "ARG BASE=python:3.11-slim\nFROM ${BASE}\n" in dockerfile  # (a base of one's own where no registry is)
    run_line = next(line for line in dockerfile.splitlines() if "docker run" in line)
    assert " -i " in run_line  # (else stdin ends at once and the agent stops with 0 packets)
