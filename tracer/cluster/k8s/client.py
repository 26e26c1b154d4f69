"""The adapter around the official Kubernetes client: config, lookups, error translation.

Everything the rest of tracer gets from here is its own small value (`PodRef`, `NodeRef`,
`PodTarget`, `ServiceRef`) or a `TracerError`; `ApiException` and the client's models stop at
this module (kr8s' rule: translate once, at the edge).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from tracer.model.way import is_ipv4
from tracer.model import PodRef, ServiceRef
from tracer.errors import ClusterError, NotFoundError, PermissionError_, TracerError, UsageError

REQUEST_TIMEOUT = 30.0
"""Seconds one API request may take (connect + read)."""
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RBAC_HINT = "tracer's RBAC is in manifests/: kubectl apply -f manifests/ (and bind the role to you)"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label the EndpointSlice controller ties a Service's slices to it by."""


@dataclass(frozen=True, kw_only=True)
class NodeRef:
    """A node as tracer sees it."""

    name: str
    internal_ip: str | None
    ready: bool


@dataclass(frozen=True, kw_only=True)
class PodTarget:
    """A running pod and the container commands run in (`kubectl exec`'s default)."""

    ref: PodRef
    container: str


STRATEGIC_MERGE = "application/strategic-merge-patch+json"
"""The content type of a patch given as an object (as kubectl's): the client's default for
patches is a JSON Patch (a list of operations), which the API server refuses for an object."""


def api_error(e: Exception, what: str) -> TracerError:
    """One failed API call (`what`: e.g. "get pod default/curl") as an error a person can act on."""
    if isinstance(e, urllib3.exceptions.HTTPError):
        return ClusterError(f"cannot reach the Kubernetes API to {what}: {_first_line(str(e))}",
                            hint="check the cluster is up and the kubeconfig/--context points at it "
                                 "(kubectl cluster-info)")
    if not isinstance(e, ApiException):
        return ClusterError(f"{what} failed: {_first_line(str(e))}")
    status, message = _status_and_message(e)
    if status == 401:
        return PermissionError_(f"the API server did not accept tracer's credentials to {what}: {message}",
                                hint="the kubeconfig's token or certificate is missing or expired (kubectl auth whoami)")
    if status == 403:
        hint = RBAC_HINT
        if "PodSecurity" in message or "pod security" in message.lower():
            hint = ("capture pods need hostNetwork and NET_RAW/NET_ADMIN: label their namespace "
                    "pod-security.kubernetes.io/enforce=privileged (manifests/namespace.yaml)")
        return PermissionError_(f"not allowed to {what}: {message}", hint=hint)
    if status == 404:
        return NotFoundError(f"cannot {what}: {message}",
                             hint="check the name and the namespace (-n); it may have been deleted meanwhile")
    if status == 0:
        return ClusterError(f"cannot reach the Kubernetes API to {what}: {message}",
                            hint="check the cluster is up and the kubeconfig/--context points at it "
                                 "(kubectl cluster-info)")
    return ClusterError(f"{what} failed ({status}): {message}")


@contextlib.contextmanager
def api_errors(what: str) -> Iterator[None]:
    """Translate whatever the client raises inside into a TracerError (see `api_error`)."""
    try:
        yield
    except (ApiException, urllib3.exceptions.HTTPError) as e:
        # The stream client turns even Ctrl-C during a websocket handshake into an ApiException:
        # give the interrupt back, so it ends the run as Ctrl-C anywhere else does.
        if isinstance(e.__context__, (KeyboardInterrupt, SystemExit)):
            raise e.__context__ from None
        raise api_error(e, what) from e


def _status_and_message(e: ApiException) -> tuple[int, str]:
    """HTTP status and the API server's own message (from its Status object when there is one)."""
    status = int(e.status or 0)
    body = e.body if isinstance(e.body, str) else (e.body.decode(errors="replace") if e.body else "")
    reason = str(e.reason or "")
    if status == 0:
        # websocket handshakes fail inside the stream client as ApiException(status=0, reason=
        # "Handshake status 403 Forbidden -+-+- {headers} -+-+- {status json}"): recover both.
        m = re.match(r"Handshake status (\d+)", reason)
        parts = reason.split(" -+-+- ")
        if m:
            status = int(m.group(1))
            body = parts[-1] if len(parts) >= 3 and parts[-1] != "None" else ""
            if body[:2] in ("b'", 'b"'):  # older websocket-client versions put the bytes' repr
                body = body[2:-1].encode().decode("unicode_escape")
    try:
        message = json.loads(body).get("message") or reason
    except (ValueError, AttributeError):
        message = body.strip() or reason
    return status, _first_line(message)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else text


class Cluster:
    """One cluster as the kubeconfig rules pick it: --kubeconfig, else $KUBECONFIG, else
    ~/.kube/config, else the in-cluster service account; --context, else the current one;
    --namespace, else the context's namespace, else `default`."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None,
                 namespace: str | None = None):
        self.configuration, default_ns, self.source = _load_configuration(kubeconfig, context)
        self.namespace = namespace or default_ns or "default"
        self._api_client = client.ApiClient(self.configuration)
        self.core = client.CoreV1Api(self._api_client)
        self.discovery = client.DiscoveryV1Api(self._api_client)

    @property
    def server(self) -> str:
        return self.configuration.host

    def new_api_client(self) -> client.ApiClient:
        """A fresh ApiClient on the same configuration: the stream client swaps `call_api` on the
        ApiClient it is given, so each exec gets one of its own."""
        return client.ApiClient(self.configuration)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api_client.close()

    # -- lookups -------------------------------------------------------------------------------

    def pod(self, name: str, namespace: str | None = None) -> PodTarget:
        """A running pod by name; NotFoundError / ClusterError with what to do otherwise."""
        ns = namespace or self.namespace
        try:
            with api_errors(f"get pod {ns}/{name}"):
                pod = self.core.read_namespaced_pod(name, ns, _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError as e:
            raise NotFoundError(f"no pod {name!r} in namespace {ns!r}",
                                hint=f"kubectl get pods -n {ns}   (or pick the namespace with -n/--namespace)") from e
        return pod_target(pod)

    def node(self, name: str) -> NodeRef:
        try:
            with api_errors(f"get node {name}"):
                node = self.core.read_node(name, _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError as e:
            raise NotFoundError(f"no node {name!r} in the cluster", hint="kubectl get nodes") from e
        return node_ref(node)

    def service(self, name: str, namespace: str | None = None) -> ServiceRef:
        """The Service `name` in `namespace` (else the cluster's default one, as kubectl's -n),
        with its TCP port and the ready pods of its EndpointSlices."""
        ns = namespace or self.namespace
        try:
            with _needs("get", "services"), api_errors(f"get service {ns}/{name}"):
                svc = self.core.read_namespaced_service(name, ns, _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError as e:
            raise NotFoundError(f"no Service {name!r} in namespace {ns!r}",
                                hint=f"kubectl get services -n {ns}   (another namespace: svc/NAMESPACE/NAME, "
                                     "http://NAME.NAMESPACE/, or -n/--namespace)") from e
        return self._service_ref(svc)

    def service_with_cluster_ip(self, cluster_ip: str) -> ServiceRef:
        """The Service, in any namespace, whose ClusterIP (or one of its clusterIPs) is `cluster_ip`."""
        with _needs("list", "services"), api_errors("list services in all namespaces"):
            services = self.core.list_service_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT).items or []
        found = next((s for s in services if s.spec and cluster_ip in _cluster_ips(s.spec)), None)
        if found is None:
            raise NotFoundError(f"no Service in the cluster has ClusterIP {cluster_ip}",
                                hint="kubectl get services -A   (the CLUSTER-IP column)")
        return self._service_ref(found, cluster_ip)

    def _service_ref(self, svc: Any, cluster_ip: str | None = None) -> ServiceRef:
        meta, spec = svc.metadata, svc.spec
        where = f"{meta.namespace}/{meta.name}"
        if spec.type == "ExternalName":
            raise UsageError(f"Service {where} is an ExternalName ({spec.external_name}): a DNS alias, no ClusterIP "
                             "for kube-proxy to DNAT", hint=f"follow to what it names: {spec.external_name}")
        ips = [ip for ip in _cluster_ips(spec) if _is_ipv4(ip)]
        if cluster_ip is None and not ips:
            headless = not spec.cluster_ip or spec.cluster_ip == "None"
            why = ("is headless (clusterIP None): no ClusterIP for kube-proxy to DNAT" if headless else
                   "has no IPv4 ClusterIP: tracer follows IPv4 Services so far")
            raise UsageError(f"Service {where} {why}",
                             hint=f"follow one of its pods: kubectl get endpointslices -n {meta.namespace} "
                                  f"-l {SERVICE_NAME_LABEL}={meta.name}")
        port = next((p for p in spec.ports or [] if (p.protocol or "TCP") == "TCP"), None)
        if port is None:
            have = ", ".join(f"{p.port}/{p.protocol or 'TCP'}" for p in spec.ports or []) or "none"
            raise UsageError(f"Service {where} has no TCP port for curl", hint=f"its ports: {have}")
        pods, number = service_endpoints(self._endpoint_slices(meta.namespace, meta.name), port)
        if number is None:  # no endpoint to say what a named targetPort is: the Service's own number
            target = str(port.target_port) if port.target_port is not None else ""
            number = int(target) if target.isdigit() else port.port
        # ServiceRef.endpoints are what Backend.pod() takes: [NAMESPACE/]POD, bare in the default namespace
        names = tuple(pod if ns == self.namespace else f"{ns}/{pod}" for ns, pod in pods)
        return ServiceRef(name=meta.name, namespace=meta.namespace, cluster_ip=cluster_ip or ips[0], port=port.port,
                          target_port=number, endpoints=names)

    def _endpoint_slices(self, namespace: str, service: str) -> list[Any]:
        with _needs("list", "endpointslices (API group discovery.k8s.io)"), \
                api_errors(f"list the endpointslices of service {namespace}/{service}"):
            slices = self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}", _request_timeout=REQUEST_TIMEOUT)
        return slices.items or []


def service_endpoints(slices: list[Any], port: Any) -> tuple[list[tuple[str, str]], int | None]:
    """The Service port's endpoints in its EndpointSlices, as (namespace, pod) of the ones kube-proxy
    sends to (ready not false, a Pod behind them), in the slices' order; and the port number
    the slices give for it (a named targetPort resolved), None without one."""
    pods: list[tuple[str, str]] = []
    number: int | None = None
    for s in slices:
        if s.address_type != "IPv4":  # (a dual-stack Service's IPv6 slice: the same pods again)
            continue
        mine = next((p for p in s.ports or [] if (p.name or "") == (port.name or "")
                     and (p.protocol or "TCP") == "TCP"), None)
        if mine is None:
            continue
        ready = [e for e in s.endpoints or [] if not (e.conditions and e.conditions.ready is False)
                 and e.target_ref and e.target_ref.kind == "Pod" and e.target_ref.name]
        if ready and number is None and mine.port is not None:
            number = mine.port
        for e in ready:
            pod = (e.target_ref.namespace or s.metadata.namespace, e.target_ref.name)
            if pod not in pods:
                pods.append(pod)
    return pods, number


def _cluster_ips(spec: Any) -> list[str]:
    """spec.clusterIP and spec.clusterIPs (dual-stack: one per family), "None" left out."""
    ips = [spec.cluster_ip, *(spec.cluster_ips or [])]
    return list(dict.fromkeys(ip for ip in ips if ip and ip != "None"))


_is_ipv4 = is_ipv4


@contextlib.contextmanager
def _needs(verb: str, resource: str) -> Iterator[None]:
    """A 403 inside: the hint names what tracer's role lacks."""
    try:
        yield
    except PermissionError_ as e:
        cause = e.__cause__
        if not (isinstance(cause, ApiException) and _status_and_message(cause)[0] == 403):
            raise  # (a 401 is the credentials, not the role)
        raise PermissionError_(e.message, hint=f"tracer needs {verb} on {resource} (the ClusterRole `tracer` in "
                                               f"manifests/rbac.yaml): kubectl apply -f manifests/ "
                                               "(and bind the role to you)") from e


def pod_target(pod: Any) -> PodTarget:
    """A V1Pod as tracer's PodTarget, if it is one tracer can follow (running, own network)."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    where = f"{meta.namespace}/{meta.name}"
    phase = status.phase if status else None
    if phase != "Running":
        raise ClusterError(f"pod {where} is {phase or 'not scheduled yet'}{_waiting_reason(status)}, not Running",
                           hint=f"kubectl describe pod -n {meta.namespace} {meta.name}")
    if spec.host_network:
        raise ClusterError(f"pod {where} uses hostNetwork: it has no veth or pod IP of its own to follow",
                           hint="pick a pod on the pod network")
    if not status.pod_ip or not spec.node_name:
        raise ClusterError(f"pod {where} has no IP yet", hint=f"kubectl get pod -n {meta.namespace} {meta.name} -o wide")
    annotations = meta.annotations or {}
    names = [c.name for c in spec.containers]
    container = annotations.get("kubectl.kubernetes.io/default-container")
    if container not in names:
        container = names[0]
    ref = PodRef(name=meta.name, namespace=meta.namespace, node=spec.node_name, ip=status.pod_ip)
    return PodTarget(ref=ref, container=container)


def _waiting_reason(status: Any) -> str:
    for cs in (status.container_statuses or []) if status else []:
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            return f" ({cs.state.waiting.reason})"
    return ""


def node_ref(node: Any) -> NodeRef:
    addresses = node.status.addresses or [] if node.status else []
    ip = next((a.address for a in addresses if a.type == "InternalIP"), None)
    conditions = node.status.conditions or [] if node.status else []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return NodeRef(name=node.metadata.name, internal_ip=ip, ready=ready)


def _load_configuration(kubeconfig: str | None, context: str | None) -> tuple[client.Configuration, str | None, str]:
    """(configuration, the context's namespace, where it came from)."""
    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    files = [Path(p).expanduser() for p in path.split(os.pathsep) if p]
    if not kubeconfig and not any(f.exists() for f in files) and os.environ.get("KUBERNETES_SERVICE_HOST"):
        if context is not None:
            raise UsageError(f"--context {context} needs a kubeconfig, and there is none (running in a pod)")
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException as e:
            raise ClusterError(f"cannot use the in-cluster service account: {e}") from e
        ns = IN_CLUSTER_NAMESPACE_FILE.read_text().strip() if IN_CLUSTER_NAMESPACE_FILE.exists() else None
        return cfg, ns, "in-cluster"
    missing = [str(f) for f in files if not f.exists()]
    if len(missing) == len(files):
        raise UsageError(f"no kubeconfig at {', '.join(missing)}",
                         hint="pass --kubeconfig FILE or set KUBECONFIG (microk8s: microk8s config > ~/.kube/config)")
    existing = os.pathsep.join(str(f) for f in files if f.exists())
    try:
        contexts, current = config.list_kube_config_contexts(existing)
        config.load_kube_config(existing, context=context, client_configuration=cfg, persist_config=False)
    except ConfigException as e:
        names = ""
        with contextlib.suppress(Exception):
            names = ", ".join(c["name"] for c in config.list_kube_config_contexts(existing)[0])
        raise UsageError(f"cannot use the kubeconfig {existing}: {e}",
                         hint=f"contexts: {names}" if names else "kubectl config view") from e
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the kubeconfig {existing}: {e}") from e
    except (TypeError, AttributeError, KeyError, IndexError) as e:  # the loader on YAML that is no kubeconfig
        raise UsageError(f"{existing} is not a kubeconfig ({type(e).__name__}: {e})",
                         hint="microk8s: microk8s config > ~/.kube/config; else kubectl config view --raw") from e
    chosen = next((c for c in contexts or [] if c.get("name") == context), None) if context else current
    ns = ((chosen or {}).get("context") or {}).get("namespace")
    return cfg, ns, f"{existing} (context {(chosen or {}).get('name', '?')})"

