"""Warm capture agents on a cluster: the DaemonSet `tracer-agent` in the capture namespace.

`tracer agents install` creates it (or updates its image); each of its pods runs on a node
(hostNetwork, every taint tolerated, the capture pods' security context: all capabilities
dropped but NET_RAW and NET_ADMIN) the agent server, `python3 /agent.py --serve SOCKET`, with
scapy imported once. A run then execs into the node's pod: `ip -j ...` for discovery, and
`python3 /agent.py --via SOCKET ARGS` for a capture (the thin client: the server forks a ready
agent for it), so no capture pod is created, no image pulled, no scapy imported per run, and no
deadline cuts a long watch short. `tracer agents uninstall` deletes it (its pods with it).
`manifests/agents.yaml` is `manifest()` for the default image (kubectl apply works as well).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tracer.errors import ClusterError, NotFoundError
from tracer.cluster.k8s.capture_pods import IMAGE_ERRORS, IMAGE_HINT, MANAGED_BY, START_ERRORS
from tracer.cluster.k8s.client import REQUEST_TIMEOUT, STRATEGIC_MERGE, Cluster, api_errors

NAME = "tracer-agent"
APP = "app.kubernetes.io/name"
SELECTOR = f"{APP}={NAME}"
SOCKET = "/run/tracer/agent.sock"
"""Where the agent server listens inside its pod (an emptyDir: root's only, gone with the pod)."""
INSTALL_TIMEOUT = 180.0
"""Seconds `install` waits for an agent on every Ready node (a first image pull takes a while)."""


def manifest(*, namespace: str, image: str) -> dict[str, Any]:
    """The agents' DaemonSet as an apps/v1 object."""
    labels = {MANAGED_BY: "tracer", APP: NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": {APP: NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "terminationGracePeriodSeconds": 5,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "agent",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "/agent.py", "--serve", SOCKET],
                        "securityContext": {
                            "capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]},
                            "allowPrivilegeEscalation": False,
                            "privileged": False,
                            "runAsUser": 0,
                        },
                        "readinessProbe": {"exec": {"command": ["test", "-S", SOCKET]},
                                           "periodSeconds": 5, "initialDelaySeconds": 1},
                        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                        "volumeMounts": [{"name": "run", "mountPath": "/run/tracer"}],
                    }],
                    "volumes": [{"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
                },
            },
        },
    }


@dataclass(frozen=True, kw_only=True)
class NodeAgent:
    """One node and its agent pod as the API says now."""

    node: str
    pod: str = ""
    """"" where the node has none."""
    ready: bool = False
    state: str = ""
    """In words: running, or why not (Pending, ErrImagePull: ..., no agent pod)."""
    image: str = ""
    """Its pod's image (the DaemonSet's, or an older template's while it rolls out)."""
    node_ready: bool = True


def warm_pods(cluster: Cluster, namespace: str) -> dict[str, str]:
    """node -> the name of its agent pod, for the nodes whose agent is running and ready."""
    return {a.node: a.pod for a in agents(cluster, namespace, all_nodes=False) if a.ready}


def agents(cluster: Cluster, namespace: str, *, all_nodes: bool = True) -> list[NodeAgent]:
    """Each node's agent (every node when `all_nodes`, else the nodes that have an agent pod)."""
    with api_errors(f"list the capture agents in {namespace}"):
        pods = cluster.core.list_namespaced_pod(namespace, label_selector=SELECTOR,
                                                _request_timeout=REQUEST_TIMEOUT).items
    by_node: dict[str, NodeAgent] = {}
    for pod in pods:
        if pod.metadata.deletion_timestamp or not pod.spec or not pod.spec.node_name:
            continue
        image = pod.spec.containers[0].image if pod.spec.containers else ""
        agent = NodeAgent(node=pod.spec.node_name, pod=pod.metadata.name, ready=_ready(pod), state=_state(pod),
                          image=image)
        if agent.node not in by_node or agent.ready:
            by_node[agent.node] = agent
    if all_nodes:
        with api_errors("list nodes"):
            nodes = cluster.core.list_node(_request_timeout=REQUEST_TIMEOUT).items
        for node in nodes:
            name = node.metadata.name
            ready = _node_ready(node)
            found = by_node.get(name)
            if found is None:
                by_node[name] = NodeAgent(node=name, state="no agent pod" + ("" if ready else " (the node is not Ready)"),
                                          node_ready=ready)
            elif not ready:
                by_node[name] = replace(found, node_ready=False, state=f"{found.state} (the node is not Ready)")
    return [by_node[n] for n in sorted(by_node)]


def install(cluster: Cluster, *, namespace: str, image: str, wait: bool = True, timeout: float = INSTALL_TIMEOUT,
            progress: Callable[[str], None] = lambda _: None) -> tuple[str, list[NodeAgent]]:
    """Create the DaemonSet, or update it to `image` where it exists ("created", "updated" or
    "unchanged"), then (with `wait`) wait until every Ready node's agent is ready; the agents."""
    apps = _apps(cluster)
    body = manifest(namespace=namespace, image=image)
    what = f"create daemonset {namespace}/{NAME}"
    try:
        with api_errors(what):
            existing = apps.read_namespaced_daemon_set(NAME, namespace, _request_timeout=REQUEST_TIMEOUT)
    except NotFoundError:
        existing = None
    if existing is None:
        try:
            with api_errors(what):
                apps.create_namespaced_daemon_set(namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError as e:
            raise NotFoundError(f"cannot {what}: namespace {namespace!r} does not exist",
                                hint="kubectl apply -f manifests/  (or pick one with --capture-namespace)") from e
        done = "created"
    elif _image_of(existing) != image:
        with api_errors(f"update daemonset {namespace}/{NAME}"):
            apps.patch_namespaced_daemon_set(NAME, namespace, {"spec": body["spec"]}, _request_timeout=REQUEST_TIMEOUT,
                                             _content_type=STRATEGIC_MERGE)
        done = "updated"
    else:
        done = "unchanged"
    if not wait:
        return done, agents(cluster, namespace)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        now = agents(cluster, namespace)
        # (right after an update the old pods are still ready: an agent counts once it runs the image)
        waiting = [a for a in now if a.node_ready and (not a.ready or a.image != image)]
        waiting = [replace(a, state=f"{a.state}, image {a.image} being replaced") if a.ready else a for a in waiting]
        stuck = [a for a in waiting if a.state.split(":")[0] in IMAGE_ERRORS | START_ERRORS]
        if stuck:
            a = stuck[0]
            raise ClusterError(f"the capture agent on node {a.node} cannot start: {a.state}",
                               hint=IMAGE_HINT if a.state.split(":")[0] in IMAGE_ERRORS
                               else f"kubectl describe pod -n {namespace} {a.pod}")
        if not waiting:
            return done, now
        if time.monotonic() > deadline:
            none = any(not a.pod for a in waiting)
            raise ClusterError(f"the capture agents are not ready after {timeout:.0f} s: "
                               + ", ".join(f"{a.node} ({a.state})" for a in waiting),
                               hint=(f"kubectl describe daemonset -n {namespace} {NAME}: its events say why it made "
                                     "no pod (a namespace enforcing a Pod Security level below privileged refuses "
                                     "hostNetwork and NET_ADMIN: manifests/namespace.yaml labels it)") if none else
                               f"kubectl get pods -n {namespace} -l {SELECTOR} -o wide")
        progress("waiting for the capture agents: " + ", ".join(f"{a.node} ({a.state})" for a in waiting))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def uninstall(cluster: Cluster, *, namespace: str, wait: bool = True, timeout: float = 60.0,
              progress: Callable[[str], None] = lambda _: None) -> bool:
    """Delete the DaemonSet and (with `wait`) wait until its pods are gone; False if there was none."""
    try:
        with api_errors(f"delete daemonset {namespace}/{NAME}"):
            _apps(cluster).delete_namespaced_daemon_set(NAME, namespace, propagation_policy="Background",
                                                        _request_timeout=REQUEST_TIMEOUT)
        found = True
    except NotFoundError:
        found = False
    deadline = time.monotonic() + timeout
    while wait:
        left = [a.pod for a in agents(cluster, namespace, all_nodes=False)]
        if not left:
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"the capture agents' pods are still there after {timeout:.0f} s: {', '.join(left)}",
                               hint=f"kubectl get pods -n {namespace} -l {SELECTOR}")
        progress(f"waiting for {len(left)} agent pod(s) to go")
        time.sleep(0.2)
    return found


def _apps(cluster: Cluster) -> Any:
    from kubernetes import client

    return client.AppsV1Api(cluster.new_api_client())


def _image_of(ds: Any) -> str:
    try:
        return ds.spec.template.spec.containers[0].image
    except (AttributeError, IndexError, TypeError):
        return ""


def _ready(pod: Any) -> bool:
    status = pod.status
    if not status or status.phase != "Running":
        return False
    statuses = status.container_statuses or []
    if not statuses or not all(cs.state and cs.state.running for cs in statuses):
        return False
    conditions = {c.type: c.status for c in status.conditions or []}
    return conditions.get("Ready", "True") == "True"


def _state(pod: Any) -> str:
    status = pod.status
    if _ready(pod):
        return "running"
    for cs in (status.container_statuses or []) if status else []:
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            return f"{cs.state.waiting.reason}: {cs.state.waiting.message or ''}".rstrip(": ")
        if cs.state and cs.state.terminated:
            return f"exited {cs.state.terminated.exit_code} ({cs.state.terminated.reason or ''})"
    if status and status.phase == "Running":
        return "running, not ready yet"
    return (status.phase if status else None) or "no status yet"


def _node_ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []) if node.status)

