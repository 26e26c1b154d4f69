"""tracer's edge to Kubernetes: the official client behind tracer's own values and errors.

    cluster = Cluster(kubeconfig=None, context=None, namespace=None)   # the usual kubeconfig rules
    target = cluster.pod("curl")             # PodTarget: ref (PodRef) + container
    res = exec.run(cluster, namespace=..., pod=..., container=..., argv=[...])   # ExecResult
    pods = CapturePods(cluster, run_id=..., namespace=..., image=...)
    pods.ready("worker1")                    # the node's capture pod, running

Errors leave as TracerError (ClusterError, NotFoundError, PermissionError_) with a hint.
"""

from tracer.cluster.k8s.capture_pods import DEFAULT_IMAGE, DEFAULT_NAMESPACE, CapturePods
from tracer.cluster.k8s.client import Cluster, NodeRef, PodTarget, api_error, api_errors
from tracer.cluster.k8s.exec import ExecChannel, ExecStream, exit_status, run

__all__ = [
    "DEFAULT_IMAGE", "DEFAULT_NAMESPACE", "CapturePods", "Cluster", "ExecChannel", "ExecStream", "NodeRef",
    "PodTarget", "api_error", "api_errors", "exit_status", "run",
]
