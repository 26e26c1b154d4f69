"""Capture pods: one per node, in the node's network namespace, for one run of tracer.

A capture pod is where tracer reads a node's state (`ip -j`, `bridge -j fdb`, /proc/sys) and
runs the capture agent. It has `hostNetwork` (it sees the node's interfaces), is pinned with
`nodeName` (no scheduler, so it lands even on a cordoned node), tolerates every taint, and may
only add NET_RAW and NET_ADMIN (all else dropped). It carries the run's id as a label, is deleted
when the run ends, and ends itself after `activeDeadlineSeconds` should tracer be killed
before that; the next run sweeps such leftovers by label.

That deadline is short (`DEFAULT_DEADLINE`: discovery and a follow take seconds to minutes), and
the API server only lets it be lowered, never raised. A command that is to run longer than the
pod has left (`ready(node, lasting=...)`: `tracer watch`'s agents run for hours) therefore gets
a new pod whose deadline covers it, and the short one goes.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import threading
import time
from typing import Any

from tracer.errors import ClusterError, NotFoundError, PermissionError_, TracerError
from tracer.cluster.k8s.client import REQUEST_TIMEOUT, Cluster, api_errors

MANAGED_BY = "app.kubernetes.io/managed-by"
RUN_ID = "tracer/run-id"
NODE_ANNOTATION = "tracer/node"
DEFAULT_IMAGE = "localhost:32000/tracer-capture:0.1"
DEFAULT_NAMESPACE = "tracer-capture"
DEFAULT_DEADLINE = 900
"""Seconds after which a capture pod ends itself (activeDeadlineSeconds), whatever tracer does."""
DEADLINE_MARGIN = 120
"""Seconds a pod's deadline leaves beyond what is to run in it (the agent's drain and collection)."""
READY_TIMEOUT = 120.0
"""Seconds to wait for a capture pod to run (an image pull on a fresh node takes a while)."""
STALE_GRACE = 60
"""A pod of another run is stale this many seconds after its deadline, even if still listed."""
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
START_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
IMAGE_HINT = "build and load the capture image (capture-pod/README.md) or pick one with --capture-image"


def pod_name(run_id: str, node: str, generation: int = 0) -> str:
    """`tracer-cap-<run>-<node>-<hash>`: a valid pod name for any node name, unique per node
    (and `-<generation>` after it for the pods that replace the first, see `CapturePods.ready`)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", node.lower()).strip("-")[:32].strip("-") or "node"
    name = f"tracer-cap-{run_id}-{slug}-{hashlib.sha1(node.encode()).hexdigest()[:5]}"
    return f"{name}-{generation}" if generation else name


def manifest(*, name: str, namespace: str, node: str, run_id: str, image: str, deadline: int) -> dict[str, Any]:
    """The capture pod for `node` as a v1 Pod object."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                MANAGED_BY: "tracer",
                "app.kubernetes.io/name": "tracer-capture",
                RUN_ID: run_id,
            },
            "annotations": {NODE_ANNOTATION: node},
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "capture",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                # The image's entrypoint is the agent; the pod itself only waits: tracer execs
                # `ip`, `bridge`, `cat` and the agent into it.
                "command": ["sleep", "infinity"],
                "securityContext": {
                    "capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]},
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "runAsUser": 0,
                },
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            }],
        },
    }


class CapturePods:
    """This run's capture pods: created on demand per node, waited for, deleted in `close()`."""

    def __init__(self, cluster: Cluster, *, run_id: str, namespace: str = DEFAULT_NAMESPACE,
                 image: str = DEFAULT_IMAGE, deadline: int = DEFAULT_DEADLINE,
                 ready_timeout: float = READY_TIMEOUT):
        self.cluster = cluster
        self.run_id = run_id
        self.namespace = namespace
        self.image = image
        self.deadline = deadline
        self.ready_timeout = ready_timeout
        self._lock = threading.Lock()
        self._created: dict[str, str] = {}  # node -> pod name (recorded before the create call)
        self._ends: dict[str, float] = {}  # node -> when (time.monotonic()) its pod's deadline passes at the latest
        self._deadlines: dict[str, int] = {}  # node -> its pod's activeDeadlineSeconds
        self._generations: dict[str, int] = {}  # node -> pods replaced there
        self._running: set[str] = set()
        self._checked: set[str] = set()

    @property
    def selector(self) -> str:
        return f"{MANAGED_BY}=tracer,{RUN_ID}={self.run_id}"

    def request(self, node: str, *, deadline: int | None = None) -> str:
        """Create the capture pod for `node` unless there is one (with `deadline`, else this
        run's); do not wait for it."""
        deadline = deadline or self.deadline
        with self._lock:
            if node in self._created:
                return self._created[node]
            name = pod_name(self.run_id, node, self._generations.get(node, 0))
            self._created[node] = name  # first: close() deletes it even if Ctrl-C hits the call below
            self._deadlines[node] = deadline
            self._ends[node] = time.monotonic() + deadline  # (it counts from the pod's start, a bit later)
        where = f"create capture pod {self.namespace}/{name} on node {node}"
        try:
            with api_errors(where):
                self.cluster.core.create_namespaced_pod(
                    self.namespace,
                    manifest(name=name, namespace=self.namespace, node=node, run_id=self.run_id,
                             image=self.image, deadline=deadline),
                    _request_timeout=REQUEST_TIMEOUT,
                )
        except NotFoundError as e:
            with self._lock:
                self._created.pop(node, None)
            raise NotFoundError(f"cannot {where}: namespace {self.namespace!r} does not exist",
                                hint="kubectl apply -f manifests/  (or pick one with --capture-namespace)") from e
        except PermissionError_:
            with self._lock:
                self._created.pop(node, None)
            raise
        return name

    def ready(self, node: str, *, lasting: float = 0) -> str:
        """The name of `node`'s capture pod once it runs (created if needed), good for `lasting`
        seconds more: a pod whose deadline comes sooner is replaced by one whose deadline covers
        them (and DEADLINE_MARGIN)."""
        need = math.ceil(lasting) + DEADLINE_MARGIN if lasting else 0
        if need and node in self._created and self._ends[node] - time.monotonic() < need:
            self._replace(node)
        if node in self._running:
            return self._created[node]
        if node not in self._checked:  # a pod asked for early by request() may sit on a NotReady node
            self._check_node(node)
            self._checked.add(node)
        name = self.request(node, deadline=max(self.deadline, need))
        self._wait_running(node, name)
        self._running.add(node)
        return name

    def deadline_of(self, node: str) -> int | None:
        """The activeDeadlineSeconds of `node`'s capture pod, if it has one."""
        with self._lock:
            return self._deadlines.get(node) if node in self._created else None

    def _replace(self, node: str) -> None:
        """Delete `node`'s pod: the next request() creates another, under a new name."""
        with self._lock:
            name = self._created.pop(node)
            self._running.discard(node)
            self._generations[node] = self._generations.get(node, 0) + 1
        self._delete(name)

    def _check_node(self, node: str) -> None:
        ref = self.cluster.node(node)
        if not ref.ready:
            raise ClusterError(f"node {node} is not Ready: a capture pod cannot run there",
                               hint=f"kubectl describe node {node}")

    def _wait_running(self, node: str, name: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        delay = 0.05
        while True:
            with api_errors(f"get capture pod {self.namespace}/{name}"):
                pod = self.cluster.core.read_namespaced_pod(name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
            status = pod.status
            phase = status.phase if status else None
            waiting = _waiting(status)
            if phase == "Running" and _container_running(status):
                return
            if phase in ("Failed", "Succeeded"):
                why = status.reason or status.message or _terminated(status) or phase
                raise ClusterError(f"capture pod {name} on node {node} ended: {why}",
                                   hint=f"kubectl describe pod -n {self.namespace} {name}")
            if waiting and waiting[0] in IMAGE_ERRORS:
                raise ClusterError(f"capture pod {name} on node {node} cannot get image {self.image}: "
                                   f"{waiting[0]} {waiting[1]}".strip(), hint=IMAGE_HINT)
            if waiting and waiting[0] in START_ERRORS:
                raise ClusterError(f"capture pod {name} on node {node} cannot start: {waiting[0]} {waiting[1]}".strip(),
                                   hint=f"kubectl describe pod -n {self.namespace} {name}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"capture pod {name} on node {node} is not running after {self.ready_timeout:.0f} s "
                    f"({phase or 'no status'}{', ' + waiting[0] if waiting else ''})",
                    hint=f"kubectl describe pod -n {self.namespace} {name}",
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def sweep(self) -> list[str]:
        """Delete capture pods of earlier runs that are over (ended, or past their deadline)."""
        with api_errors(f"list capture pods in {self.namespace}"):
            pods = self.cluster.core.list_namespaced_pod(
                self.namespace, label_selector=f"{MANAGED_BY}=tracer", _request_timeout=REQUEST_TIMEOUT).items
        now = datetime.datetime.now(datetime.timezone.utc)
        stale = [p.metadata.name for p in pods
                 if (p.metadata.labels or {}).get(RUN_ID) != self.run_id and _is_stale(p, now)]
        for name in stale:
            self._delete(name)
        return stale

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._created.values())

    def close(self) -> None:
        """Delete this run's capture pods: the ones created, and any the label finds. Idempotent."""
        with self._lock:
            names = set(self._created.values())
            longest = max(self._deadlines.values(), default=self.deadline)
            self._created.clear()
            self._running.clear()
        errors: list[Exception] = []
        for name in sorted(names):
            try:
                self._delete(name)
            except TracerError as e:  # keep going: delete what can be deleted
                errors.append(e)
        try:
            with api_errors(f"list capture pods in {self.namespace}"):
                found = self.cluster.core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, _request_timeout=REQUEST_TIMEOUT).items
            for pod in found:
                if pod.metadata.name not in names and not pod.metadata.deletion_timestamp:
                    self._delete(pod.metadata.name)
        except TracerError as e:
            errors.append(e)
        if errors:
            raise ClusterError(f"could not delete every capture pod of run {self.run_id}: {errors[0]}",
                               hint=f"they end themselves within {longest} s; or: "
                                    f"kubectl delete pod -n {self.namespace} -l {RUN_ID}={self.run_id}")

    def _delete(self, name: str) -> None:
        try:
            with api_errors(f"delete capture pod {self.namespace}/{name}"):
                self.cluster.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0,
                                                        _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError:
            pass  # already gone (or never made it): that is what we want


def _waiting(status: Any) -> tuple[str, str] | None:
    for cs in (status.container_statuses or []) if status else []:
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            return cs.state.waiting.reason, cs.state.waiting.message or ""
    return None


def _terminated(status: Any) -> str:
    for cs in (status.container_statuses or []) if status else []:
        t = cs.state.terminated if cs.state else None
        if t:
            return f"container exited {t.exit_code} ({t.reason or ''}) {t.message or ''}".strip()
    return ""


def _container_running(status: Any) -> bool:
    statuses = status.container_statuses or []
    return bool(statuses) and all(cs.state and cs.state.running for cs in statuses)


def _is_stale(pod: Any, now: datetime.datetime) -> bool:
    phase = pod.status.phase if pod.status else None
    if phase in ("Succeeded", "Failed"):
        return True
    created = pod.metadata.creation_timestamp
    deadline = pod.spec.active_deadline_seconds if pod.spec else None
    if created is None or deadline is None:
        return False
    return (now - created).total_seconds() > deadline + STALE_GRACE
