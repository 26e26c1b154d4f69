"""`tracer follow` on a Kubernetes cluster: pods by the API, nodes through capture pods.

`pod()` finds a running pod in the namespace and already asks for a capture pod on its node
(discovery and the agents need one on both nodes: both start at once instead of one after the
other), unless the node has a warm agent (the DaemonSet `tracer agents install` makes,
tracer.cluster.k8s.agents): then discovery and the capture exec into that pod, and no capture
pod is made for the node (`--agents`: auto, warm, cold). `service()` reads a Service and its EndpointSlices (`svc/NAME`, a URL, a ClusterIP;
kube-proxy's rule is then read from the source node's nat table through `exec_node`).
`exec_pod` runs in the pod's app container; `exec_node` and `start_agent` run in the
node's capture pod (hostNetwork: `ip -j`, `bridge -j fdb`, /proc/sys/net see the node), an
agent in one whose deadline covers the agent's --max-seconds (a watch's run for hours).
`close()` ends the agents' streams and deletes this run's capture pods, even while Ctrl-C is
pressed again.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
from collections.abc import Iterator, Sequence

from tracer.cluster.ports import ExecResult
from tracer.model import PodRef, ServiceRef
from tracer.errors import NotFoundError, PermissionError_, TracerError, UsageError
from tracer.cluster.backends import AGENT_MODES
from tracer.cluster.k8s import agents as k8s_agents
from tracer.cluster.k8s import ephemeral
from tracer.cluster.k8s import exec as k8s_exec
from tracer.cluster.k8s.capture_pods import DEFAULT_DEADLINE, DEFAULT_IMAGE, DEFAULT_NAMESPACE, CapturePods
from tracer.cluster.k8s.client import Cluster

AGENT = ["python3", "/agent.py"]
"""How the capture image runs the agent (capture-pod/Dockerfile)."""
AGENT_MAX_SECONDS = 300.0
"""How long the agent runs without --max-seconds (capture-pod/agent.py)."""


def connect(*, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
            capture_image: str | None = None, capture_namespace: str | None = None,
            run_id: str | None = None, deadline: int = DEFAULT_DEADLINE, agents: str = "auto",
            curl_image: str | None = None) -> KubernetesBackend:
    """The Kubernetes FollowBackend for one run; sweeps capture pods earlier runs left behind.
    (tracer.cluster.backends.make_backend picks this or the lab's by the options.)"""
    cluster = Cluster(kubeconfig=kubeconfig, context=context, namespace=namespace)
    backend = KubernetesBackend(cluster, capture_image=capture_image or DEFAULT_IMAGE,
                                capture_namespace=capture_namespace or DEFAULT_NAMESPACE,
                                run_id=run_id or secrets.token_hex(4), deadline=deadline, agents=agents,
                                curl_image=curl_image)
    try:
        backend.capture_pods.sweep()
    except BaseException:
        with contextlib.suppress(TracerError):  # (the first error is the one to tell)
            backend.close()
        raise
    return backend


class KubernetesBackend:
    """A `FollowBackend` over the Kubernetes API (exec websockets and capture pods)."""

    name = "kubernetes"

    def __init__(self, cluster: Cluster, *, capture_image: str, capture_namespace: str, run_id: str,
                 deadline: int = DEFAULT_DEADLINE, agents: str = "auto", curl_image: str | None = None):
        """`curl_image`: the request's curl runs in an ephemeral container of this image in the
        source pod (tracer.cluster.k8s.ephemeral), not in the pod's app container."""
        if agents not in AGENT_MODES:
            raise UsageError(f"--agents {agents!r}: not one of {', '.join(AGENT_MODES)}")
        self.cluster = cluster
        self.agents = agents
        self._warm: dict[str, str] | None = None  # node -> its warm agent's pod, once looked up
        self.warm_nodes: set[str] = set()
        """The nodes whose agent is warm in this run."""
        self.curl_image = curl_image
        self._curl_containers: dict[tuple[str, str], str] = {}  # (namespace, pod) -> its curl container
        self._lasting = 0.0  # the longest --max-seconds of the run's agents
        self.run_id = run_id
        self.capture_pods = CapturePods(cluster, run_id=run_id, namespace=capture_namespace,
                                        image=capture_image, deadline=deadline)
        self._containers: dict[tuple[str, str], str] = {}
        self._channels: list[k8s_exec.ExecChannel] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    def pod(self, name: str) -> PodRef:
        namespace, sep, pod = name.rpartition("/")  # ([NAMESPACE/]POD, as kubectl takes it)
        if not pod or (sep and not namespace) or "/" in namespace:
            raise UsageError(f"{name!r}: not [NAMESPACE/]POD", hint="e.g. curl, or default/curl")
        target = self.cluster.pod(pod, namespace or None)
        self._containers[(target.ref.namespace, target.ref.name)] = target.container
        if self._warm_pod(target.ref.node) is None:
            self.capture_pods.request(target.ref.node)
        return target.ref

    def _warm_pod(self, node: str) -> str | None:
        """The pod of `node`'s warm agent, or None where the run uses a capture pod of its own."""
        if self.agents == "cold":
            return None
        with self._lock:
            if self._warm is None:
                try:
                    self._warm = k8s_agents.warm_pods(self.cluster, self.capture_pods.namespace)
                except (PermissionError_, NotFoundError):
                    if self.agents == "warm":
                        raise
                    self._warm = {}  # (auto: no agents to be seen, the run's own capture pods)
            pod = self._warm.get(node)
        if pod is None and self.agents == "warm":
            raise NotFoundError(f"no warm capture agent runs on node {node}",
                                hint=f"tracer agents install   (kubectl get pods -n {self.capture_pods.namespace} "
                                     f"-l {k8s_agents.SELECTOR} -o wide; or --agents auto)")
        if pod is not None:
            self.warm_nodes.add(node)
        return pod

    def service(self, name: str, namespace: str | None = None, *, cluster_ip: str | None = None) -> ServiceRef:
        """The Service by [namespace and] name, or by ClusterIP in any namespace; its endpoints are
        pod names as `pod()` takes them (NAMESPACE/POD outside the default namespace)."""
        if cluster_ip:
            return self.cluster.service_with_cluster_ip(cluster_ip)
        return self.cluster.service(name, namespace)

    def exec_pod(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        container = self._containers.get((pod.namespace, pod.name))
        # No timeout of our own (as on the lab): what runs here (curl --max-time) bounds itself,
        # and Ctrl-C ends the stream.
        return k8s_exec.run(self.cluster, namespace=pod.namespace, pod=pod.name, container=container, argv=argv,
                            timeout=None)

    def exec_request(self, pod: PodRef, argv: Sequence[str]) -> ExecResult:
        """The request's curl: in the pod's app container, or with --curl-image in an
        ephemeral container of that image in the pod (added at the first request)."""
        if not self.curl_image:
            return self.exec_pod(pod, argv)
        key = (pod.namespace, pod.name)
        if key not in self._curl_containers:
            self._curl_containers[key] = ephemeral.add_curl(self.cluster, pod, image=self.curl_image, run_id=self.run_id,
                                                            seconds=self._lasting or AGENT_MAX_SECONDS)
        return k8s_exec.run(self.cluster, namespace=pod.namespace, pod=pod.name, container=self._curl_containers[key],
                            argv=argv, timeout=None)

    def exec_node(self, node: str, argv: Sequence[str]) -> ExecResult:
        name = self._warm_pod(node) or self.capture_pods.ready(node)
        return k8s_exec.run(self.cluster, namespace=self.capture_pods.namespace, pod=name, container=None, argv=argv)

    def start_agent(self, node: str, argv: Sequence[str]) -> k8s_exec.ExecChannel:
        self._lasting = max(self._lasting, _max_seconds(argv))
        warm = self._warm_pod(node)
        if warm is not None:  # the thin client: the node's agent server forks it a ready agent
            stream = k8s_exec.ExecStream(self.cluster, namespace=self.capture_pods.namespace, pod=warm,
                                         container=None, argv=[*AGENT, "--via", k8s_agents.SOCKET, *argv], stdin=True)
            channel = k8s_exec.ExecChannel(stream, pod_deadline=None)
            with self._lock:
                self._channels.append(channel)
            return channel
        # in a pod that outlives the agent: a watch's agents run for hours, a follow's minutes
        name = self.capture_pods.ready(node, lasting=_max_seconds(argv))
        stream = k8s_exec.ExecStream(self.cluster, namespace=self.capture_pods.namespace, pod=name,
                                     container=None, argv=[*AGENT, *argv], stdin=True)
        channel = k8s_exec.ExecChannel(stream, pod_deadline=self.capture_pods.deadline_of(node))
        with self._lock:
            self._channels.append(channel)
        return channel

    def close(self) -> None:
        """End the agents' streams, delete the capture pods. Idempotent; a second Ctrl-C waits."""
        with _interrupts_deferred():
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                channels, self._channels = self._channels, []
            for channel in channels:
                with contextlib.suppress(TracerError, OSError):
                    channel.close()
            try:
                self.capture_pods.close()
            finally:
                self.cluster.close()


def _max_seconds(argv: Sequence[str]) -> float:
    """How long the agent runs at most: its --max-seconds (tracer.cluster.agents.agent_argv), else
    agent.py's default."""
    args = list(argv)
    if "--max-seconds" in args[:-1]:
        return float(args[args.index("--max-seconds") + 1])
    return AGENT_MAX_SECONDS


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT while cleaning up (main thread only) and raise it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and previous is signal.default_int_handler:
            raise KeyboardInterrupt
