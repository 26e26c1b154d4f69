"""curl for a source pod that has none: an ephemeral container in that pod (`--curl-image`).

kubectl debug's mechanism: the pod's `ephemeralcontainers` subresource gets one more container
of the image asked for, which runs in the pod's own network namespace, so the request leaves
the source pod's eth0 as its app's would. Its command is `sleep SECONDS`, for as long as the run
may last (its agents' --max-seconds and a margin): the API cannot remove an ephemeral container
again (it stays in the pod's spec, stopped, until the pod goes, as kubectl debug's do), and a
signal from inside to its PID 1 would be ignored, so it ends by itself. tracer execs the
request's curl into it. The image needs curl and sleep (curlimages/curl has both).
"""

from __future__ import annotations

import math
import time
from typing import Any

from tracer.errors import ClusterError, NotFoundError
from tracer.cluster.k8s.capture_pods import IMAGE_ERRORS, START_ERRORS
from tracer.cluster.k8s.client import REQUEST_TIMEOUT, STRATEGIC_MERGE, Cluster, api_errors
from tracer.model import PodRef

READY_TIMEOUT = 120.0
"""Seconds the container gets to run (a first pull of its image on the node takes a while)."""
MARGIN = 60
"""Seconds its `sleep` lasts beyond the run's agents."""


def container_name(run_id: str) -> str:
    return f"tracer-curl-{run_id}"[:63]


def spec(*, name: str, image: str, seconds: float) -> dict[str, Any]:
    """The ephemeral container: no capabilities, no privilege escalation, the runtime's seccomp
    (what a namespace enforcing the restricted Pod Security level lets in, short of a user)."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", str(math.ceil(seconds) + MARGIN)],
        "stdin": False,
        "tty": False,
        "terminationMessagePolicy": "File",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }


def add_curl(cluster: Cluster, pod: PodRef, *, image: str, run_id: str, seconds: float) -> str:
    """Add the run's curl container to `pod` and wait until it runs; its name."""
    name = container_name(run_id)
    where = f"add an ephemeral container to pod {pod.namespace}/{pod.name}"
    body = {"spec": {"ephemeralContainers": [spec(name=name, image=image, seconds=seconds)]}}
    try:
        with api_errors(where):
            cluster.core.patch_namespaced_pod_ephemeralcontainers(pod.name, pod.namespace, body,
                                                                  _request_timeout=REQUEST_TIMEOUT,
                                                                  _content_type=STRATEGIC_MERGE)
    except NotFoundError as e:
        raise NotFoundError(f"cannot {where}: {e.message.split(': ', 1)[-1]}",
                            hint="the pod is gone, or the cluster is older than Kubernetes 1.25 (ephemeral "
                                 "containers); follow from a pod with curl instead") from e
    _wait_running(cluster, pod, name, image)
    return name


def _wait_running(cluster: Cluster, pod: PodRef, name: str, image: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    delay = 0.05
    while True:
        with api_errors(f"get pod {pod.namespace}/{pod.name}"):
            obj = cluster.core.read_namespaced_pod(pod.name, pod.namespace, _request_timeout=REQUEST_TIMEOUT)
        status = next((s for s in (obj.status.ephemeral_container_statuses or []) if s.name == name), None)
        state = status.state if status else None
        if state and state.running:
            return
        if state and state.terminated:
            t = state.terminated
            raise ClusterError(f"the curl container in pod {pod.name} ended at once: exit {t.exit_code} "
                               f"{t.reason or ''} {t.message or ''}".rstrip(),
                               hint=f"the image {image} needs curl and sleep (e.g. curlimages/curl)")
        waiting = state.waiting if state else None
        if waiting and waiting.reason in IMAGE_ERRORS:
            raise ClusterError(f"the curl container in pod {pod.name} cannot get image {image}: "
                               f"{waiting.reason} {waiting.message or ''}".rstrip(),
                               hint="check the image's name, or that the node can pull it (--curl-image)")
        if waiting and waiting.reason in START_ERRORS:
            raise ClusterError(f"the curl container in pod {pod.name} cannot start: {waiting.reason} "
                               f"{waiting.message or ''}".rstrip(), hint=f"kubectl describe pod -n {pod.namespace} {pod.name}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the curl container in pod {pod.name} is not running after {READY_TIMEOUT:.0f} s"
                               + (f" ({waiting.reason})" if waiting and waiting.reason else ""),
                               hint=f"kubectl describe pod -n {pod.namespace} {pod.name}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
