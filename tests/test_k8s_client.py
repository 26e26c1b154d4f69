"""The Kubernetes adapter's edges without a cluster: errors, exit statuses, kubeconfig rules,
capture pod spec, and the manifests and image the backend relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes.client.rest import ApiException

from tracer.errors import ClusterError, NotFoundError, PermissionError_, UsageError
from tracer.cluster.k8s.backend import AGENT
from tracer.cluster.k8s import Cluster, api_error, api_errors, exit_status
from tracer.cluster.k8s.capture_pods import DEFAULT_NAMESPACE, MANAGED_BY, RUN_ID, manifest, pod_name

REPO = Path(__file__).resolve().parent.parent


def status_body(code: int, message: str, reason: str = "Forbidden") -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                       "reason": reason, "code": code})


# -- exit status from the Status object on channel 3 -------------------------------------------

@pytest.mark.parametrize("status,code", [
    ({"metadata": {}, "status": "Success"}, 0),
    ({"status": "Failure", "reason": "NonZeroExitCode",
      "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}}, 2),
    ({"status": "Failure", "reason": "InternalError", "message": 'exec: "ip": executable file not found in $PATH',
      "details": {"causes": [{"message": 'exec: "ip": executable file not found in $PATH'}]}}, 127),
    ({"status": "Failure", "reason": "InternalError", "message": "permission denied"}, 126),
])
def test_exit_status_from_the_status_channel(status: dict, code: int) -> None:
    got, why = exit_status(json.dumps(status).encode())
    assert got == code
    assert (why == "") == (code in (0, 2))


def test_no_status_at_all_is_an_error() -> None:
    with pytest.raises(ClusterError, match="without an exit status"):
        exit_status(b"")


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
