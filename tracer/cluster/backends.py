"""The one factory of backends: the lab or Kubernetes, as the commands' options pick.

`make_backend` builds the FollowBackend of a `tracer follow` or `tracer watch` run (agents on the
nodes); `discovery_backend` the Backend `tracer path` reads through (the lab's namespaces, no
agents; or Kubernetes through short-lived capture pods, which its `close()` deletes). The lab and
the Kubernetes client are imported only once picked (the client takes a second to import).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracer.errors import UsageError

if TYPE_CHECKING:
    from tracer.cluster.k8s.backend import KubernetesBackend
    from tracer.cluster.lab import Lab
    from tracer.cluster.ports import DiscoveryBackend, FollowBackend

BACKENDS = ("lab", "kubernetes")
AGENT_MODES = ("auto", "warm", "cold")
"""--agents: the warm agents where they run, else the run's own; only warm ones; only the run's own."""


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """--backend and the Kubernetes options, as given (tracer.commands.options)."""

    backend: str | None = None
    """One of BACKENDS, or None: picked by the others (see `choose_backend`)."""
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    """Kubernetes: the namespace of SRC and DST."""
    capture_image: str | None = None
    capture_namespace: str | None = None
    agents: str = "auto"
    """One of AGENT_MODES."""
    curl_image: str | None = None
    """Kubernetes: curl from an ephemeral container of this image in the source pod."""


def choose_backend(options: BackendOptions) -> str:
    """"lab" or "kubernetes", as --backend and the Kubernetes options pick (see --backend): the
    Kubernetes options say Kubernetes; else the lab when one is up; else Kubernetes when kubectl
    would find a cluster ($KUBECONFIG, ~/.kube/config, or in a pod: its service account); else
    the lab (whose error then says to start one)."""
    o = options
    k8s_given = o.kubeconfig or o.context or o.capture_image or o.capture_namespace or o.curl_image
    backend = o.backend
    if backend is None:
        backend = "kubernetes" if k8s_given or (not _lab_up() and kubeconfig_found()) else "lab"
    if backend == "lab" and k8s_given:
        raise UsageError("--kubeconfig, --context, --capture-* and --curl-image apply to --backend kubernetes only",
                         hint="the lab's pods have curl" if o.curl_image else None)
    return backend


def make_backend(options: BackendOptions, *, run_id: str) -> FollowBackend:
    """The FollowBackend the options pick, for the run `run_id` names (agents, capture pods)."""
    if choose_backend(options) == "lab":
        from tracer.cluster.lab import require_root
        from tracer.cluster.lab.backend import LabFollowBackend

        require_root("follow")
        return LabFollowBackend(_load_lab(options), run_id=run_id, agents=options.agents)
    return _kubernetes(options, run_id=run_id)


def discovery_backend(options: BackendOptions) -> DiscoveryBackend:
    """The backend `tracer path` reads the way through; the caller closes it whatever happens."""
    if choose_backend(options) == "lab":
        from tracer.cluster.lab import require_root

        require_root("path")  # reading other namespaces needs root
        return _load_lab(options).backend()
    return _kubernetes(options, run_id=None)


def _load_lab(options: BackendOptions) -> Lab:
    """The lab that is up; when none is and the lab was not asked for, say the cluster way too."""
    from tracer.cluster.lab import Lab
    from tracer.errors import NotFoundError

    try:
        return Lab.load()
    except NotFoundError as e:
        if options.backend == "lab":
            raise
        raise NotFoundError(e.message, hint="run: tracer lab up; or, for a cluster, give --kubeconfig FILE (tracer "
                                            "reads $KUBECONFIG and ~/.kube/config by itself, as kubectl)") from None


def _kubernetes(options: BackendOptions, *, run_id: str | None) -> KubernetesBackend:
    try:
        from tracer.cluster.k8s.backend import connect
    except ImportError:
        raise UsageError("the Kubernetes backend is not available yet", hint="use --backend lab") from None
    o = options
    return connect(kubeconfig=o.kubeconfig, context=o.context, namespace=o.namespace, capture_image=o.capture_image,
                   capture_namespace=o.capture_namespace, run_id=run_id, agents=o.agents, curl_image=o.curl_image)


def _lab_up() -> bool:
    from tracer.cluster.lab import StateStore

    try:
        return StateStore.from_env().load() is not None
    except OSError:  # (a user who may not read the lab's state: no lab of theirs)
        return False


def kubeconfig_found() -> bool:
    """Whether kubectl would find a cluster: $KUBECONFIG (any of its files), ~/.kube/config, or
    the service account of a pod this runs in."""
    if os.environ.get("KUBECONFIG"):
        return any(os.path.isfile(os.path.expanduser(p)) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p)
    if os.path.isfile(os.path.expanduser("~/.kube/config")):
        return True
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.isfile(SERVICE_ACCOUNT_TOKEN)


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
