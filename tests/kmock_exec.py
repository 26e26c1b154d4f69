"""A stand-in Kubernetes API server over the lab: kmock's emulator plus the exec websocket.

kmock (`KubernetesEmulator`) keeps v1 Pods, Nodes and Namespaces in memory and serves get,
list, create and delete as the official client expects them. On top, this module adds what a
cluster does beyond storing objects, just enough for tracer's Kubernetes backend to run its
real code path against the lab:

- `pods/exec` as a websocket speaking `v5.channel.k8s.io` / `v4.channel.k8s.io` (channel byte
  0 stdin, 1 stdout, 2 stderr, 3 Status, 255 close in v5). The command runs with
  `ip netns exec` in the lab namespace of that pod, or, for a hostNetwork pod (a capture pod),
  of its node. `python3 /agent.py` is the repo's capture-pod/agent.py under this Python.
- a kubelet's part: a created pod turns Running (with a container status) a moment later; a
  deleted pod's processes are killed, as a container runtime does.
- `labelSelector` on lists (kmock's emulator ignores it).
- a DaemonSet controller's and a kubelet's part for DaemonSets (apps/v1): a pod per node from
  the template (named `<ds>-<hash>`, owned by it), replaced when the template changes, deleted
  with it; a pod whose container has a command other than `sleep` runs it as its main process
  (the warm agents' `python3 /agent.py --serve ...`), killed with the pod. Paths under
  /run/tracer/ (an emptyDir in the manifest) are each pod's own directory, as in a container.
- the lab's Services and their EndpointSlices (discovery.k8s.io/v1), as the EndpointSlice
  controller writes them: one slice per Service, its pods' addresses with `targetRef`, the
  Service's ports by name with the target port's number.
- `pods/ephemeralcontainers` (PATCH, a strategic merge by name, as kubectl debug sends it): the
  container is added to the pod's spec and runs a moment later (ErrImagePull for an unpullable
  image); exec into it runs in the pod's namespace, as every container of a pod.
- a patch's content type as the API server reads it: an object sent as a JSON Patch (the
  official client's default) is refused with 400, as the real one refuses it.
- containers lacking a program (`lacking`): an exec of it there fails as the runtime's does.
- RBAC's refusal on request: a resource in `forbidden` answers 403 as the API server does.
- canned replies for commands (`replies`): what a command prints on a node other than the
  lab's (iptables-save in nftables mode), or a command the image lacks.

It runs on its own event loop in a thread (`StandIn` is a context manager), so the synchronous
client in the test, or a `tracer` process, can talk to it; `kubeconfig` is a file pointing at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock

from tracer.cluster.lab import Lab

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "capture-pod" / "agent.py"
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255
PODS = kmock.resource("", "v1", "pods")
NODES = kmock.resource("", "v1", "nodes")
NAMESPACES = kmock.resource("", "v1", "namespaces")
SERVICES = kmock.resource("", "v1", "services")
ENDPOINTSLICES = kmock.resource("discovery.k8s.io", "v1", "endpointslices")
DAEMONSETS = kmock.resource("apps", "v1", "daemonsets")
POD_RUN = "/run/tracer/"
"""A pod's own directory (an emptyDir): mapped to one of the stand-in's per pod."""
SERVICE_NAME = "kubernetes.io/service-name"
"""The label that ties an EndpointSlice to its Service."""
CAPTURE_NAMESPACE = "tracer-capture"
UNPULLABLE = "unpullable/"
"""Images starting so never arrive (the pod waits in ErrImagePull), as on a node without them."""
RUNNING_AFTER = 0.05
"""Seconds a created pod stays Pending, so callers really wait for Running."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": _now(), "resourceVersion": "1", **extra}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def running_status(pod: dict[str, Any], host_ip: str | None) -> dict[str, Any]:
    """The status a kubelet reports for a started pod (all containers running)."""
    spec = pod.get("spec", {})
    started = _now()
    return {
        "phase": "Running",
        "hostIP": host_ip,
        "podIP": host_ip if spec.get("hostNetwork") else pod.get("status", {}).get("podIP"),
        "startTime": started,
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "restartCount": 0,
             "state": {"running": {"startedAt": started}}}
            for c in spec.get("containers", [])
        ],
    }


def lab_objects(lab: Lab) -> list[tuple[kmock.resource, str | None, str, dict[str, Any]]]:
    """The lab's nodes, pods, Services and their EndpointSlices, and the namespaces, as the API
    has them (key + object)."""
    objs: list[tuple[kmock.resource, str | None, str, dict[str, Any]]] = []
    for ns, labels in (("default", {}), ("kube-system", {}),
                       (CAPTURE_NAMESPACE, {"pod-security.kubernetes.io/enforce": "privileged"})):
        objs.append((NAMESPACES, None, ns, {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(ns, labels={"kubernetes.io/metadata.name": ns, **labels}),
            "status": {"phase": "Active"},
        }))
    for node in lab.nodes:
        objs.append((NODES, None, node.name, {
            "apiVersion": "v1", "kind": "Node",
            "metadata": _meta(node.name, labels={"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"}),
            "spec": {"podCIDR": node.block},
            "status": {
                "addresses": [{"type": "InternalIP", "address": node.underlay_ip},
                              {"type": "Hostname", "address": node.name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }))
    images = {"curl": "curlimages/curl", "httpbin": "kennethreitz/httpbin"}
    for pod in lab.pods:
        obj = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": _meta(pod.name, pod.namespace, labels={"app": pod.app}),
            "spec": {"nodeName": pod.node,
                     "containers": [{"name": pod.app, "image": images.get(pod.app, pod.app)}]},
            "status": {"podIP": pod.ip, "podIPs": [{"ip": pod.ip}]},
        }
        obj["status"] = running_status(obj, lab.node(pod.node).underlay_ip) | obj["status"]
        objs.append((PODS, pod.namespace, pod.name, obj))
    for svc in lab.topology.services:
        ports = [{"name": p.name, "protocol": p.protocol.upper(), "port": p.port, "targetPort": p.target_port}
                 for p in svc.ports]
        objs.append((SERVICES, svc.namespace, svc.name, service(svc.name, svc.namespace, svc.cluster_ip, ports)))
        pods = [lab.pod(name) for name in svc.endpoints]
        name = f"{svc.name}-lab01"  # (the controller's generateName: NAME- and five random characters)
        objs.append((ENDPOINTSLICES, svc.namespace, name, endpoint_slice(
            name, svc.namespace, svc.name,
            [endpoint(p.ip, p.name, p.namespace, p.node) for p in pods],
            [{"name": p.name, "protocol": p.protocol.upper(), "port": p.target_port} for p in svc.ports])))
    return objs


def service(name: str, namespace: str, cluster_ip: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """A v1 Service of type ClusterIP as the API server returns it."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace),
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports,
                     "selector": {"app": name}, "sessionAffinity": "None", "ipFamilies": ["IPv4"]},
            "status": {"loadBalancer": {}}}


def endpoint(ip: str, pod: str, namespace: str, node: str, *, ready: bool = True) -> dict[str, Any]:
    """One endpoint of an EndpointSlice: a pod's address, its conditions and reference."""
    return {"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": False},
            "nodeName": node,
            "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace, "uid": str(uuid.uuid4())}}


def endpoint_slice(name: str, namespace: str, service_name: str, endpoints: list[dict[str, Any]],
                   ports: list[dict[str, Any]]) -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice as the EndpointSlice controller writes it (no
    `endpoints` key when there is none, as the API server leaves it out)."""
    obj: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": _meta(name, namespace, labels={
            SERVICE_NAME: service_name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}),
        "ports": ports,
    }
    if endpoints:
        obj["endpoints"] = endpoints
    return obj


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors (`a=b,c!=d,e`), as tracer uses them."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.strip().rstrip("=")) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def status_object(code: int | None, argv: Sequence[str], error: str | None = None) -> dict[str, Any]:
    """What the kubelet sends on channel 3 when the command has ended (or could not start)."""
    if error is not None:
        msg = f"error executing command in container: {error}"
        return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {msg}",
                "reason": "InternalError", "details": {"causes": [{"message": msg}]}, "code": 500}
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {list(argv)}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


@attrs.define(kw_only=True)
class LabKubernetes(kmock.KubernetesEmulator):
    """kmock's emulator with exec, a kubelet's pod start and kill, and label selectors."""

    lab: Lab
    protocols: tuple[str, ...] = (V5, V4)
    exec_log: list[tuple[str, str, tuple[str, ...]]] = attrs.field(factory=list)
    """(namespace, pod, argv) of every exec, for assertions."""
    ended: list[tuple[str, str, tuple[str, ...], int]] = attrs.field(factory=list)
    """(namespace, pod, argv, exit code) of every exec'd command that has ended."""
    stdin_log: list[tuple[tuple[str, ...], bytes]] = attrs.field(factory=list)
    """(argv, bytes) of everything written to an exec'd command's stdin."""
    spawned: list[tuple[int, str, str, tuple[str, ...]]] = attrs.field(factory=list)
    """(pid, namespace, pod, argv) of every process the stand-in started."""
    processes: dict[tuple[str, str], set[_Process]] = attrs.field(factory=dict)
    forbidden: set[str] = attrs.field(factory=set)
    """Resources (plurals) the tester's role lacks: every request for one is refused with 403."""
    exec_containers: list[tuple[str, str, str | None, tuple[str, ...]]] = attrs.field(factory=list)
    """(namespace, pod, container, argv) of every exec."""
    lacking: dict[str, set[str]] = attrs.field(factory=dict)
    """container name -> the programs its image does not have (exec of one: not found)."""
    replies: dict[tuple[str, ...], tuple[int, bytes, bytes] | None] = attrs.field(factory=dict)
    """argv -> (exit code, stdout, stderr) sent instead of running it; None: not in the image."""
    _tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    pod_dirs: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="tracer-kmock-pods-")))
    """Each pod's /run/tracer/, as `<pod_dirs>/<namespace>/<pod>/`."""

    def load_lab(self) -> None:
        for resource, ns, name, obj in lab_objects(self.lab):
            self.objects[resource, ns, name] = obj

    def live(self, resource: kmock.resource, namespace: str | None) -> list[dict[str, Any]]:
        return [obj.raw for (res, ns, _), obj in self.objects.items()
                if res == resource and (namespace is None or ns == namespace) and not obj.deleted]

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural in self.forbidden:
            self._refuse(request)
        if request.resource == PODS and request.subresource == "exec":
            return await self._exec(request)
        if request.action == kmock.action.UPDATE and request._raw_request is not None:
            kind = request._raw_request.headers.get("Content-Type", "")
            if kind.startswith("application/json-patch+json") and isinstance(request.data, dict):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message=(
                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch"))
        if request.resource == PODS and request.subresource == "ephemeralcontainers":
            return self._add_ephemeral(request)
        if request.resource is not None and request.action == kmock.action.LIST and request.params.get("labelSelector"):
            items = [o for o in self.live(request.resource, request.namespace)
                     if matches(o.get("metadata", {}).get("labels") or {}, request.params["labelSelector"])]
            group = request.resource.group
            return aiohttp.web.json_response({"apiVersion": f"{group}/v1" if group else "v1", "kind": "List",
                                              "metadata": {"resourceVersion": "1"}, "items": items})
        if request.resource == PODS and request.action == kmock.action.CREATE:
            self._admit(request)
        if request.resource == DAEMONSETS and request.action == kmock.action.CREATE:
            self._admit_namespaced(request)
        response = await super()._handle(request)
        if request.resource == DAEMONSETS and response.status < 300 and request.action in (
                kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            await self._sync_daemon_set(request.namespace or "", request.name or request.data["metadata"]["name"])
        if request.resource == PODS and request.action == kmock.action.CREATE and response.status < 300:
            self._start(request.namespace, request.data["metadata"]["name"])
        if request.resource == PODS and request.action == kmock.action.DELETE and response.status < 300:
            await self._kill((request.namespace or "", request.name or ""))
        return response

    def _refuse(self, request: kmock.Request) -> None:
        """RBAC's 403, worded as the API server words it."""
        assert request.resource is not None
        res, group = request.resource.plural, request.resource.group or ""
        verb = {kmock.action.LIST: "list", kmock.action.FETCH: "get", kmock.action.CREATE: "create",
                kmock.action.DELETE: "delete", kmock.action.WATCH: "watch"}.get(request.action, "patch")
        where = f' in the namespace "{request.namespace}"' if request.namespace else " at the cluster scope"
        what = f'{res} "{request.name}"' if request.name else res
        raise kmock.KubernetesError(status=403, reason="Forbidden", message=(
            f'{what} is forbidden: User "tester" cannot {verb} resource "{res}" in API group "{group}"{where}'))

    def _admit(self, request: kmock.Request) -> None:
        """What the API server adds or refuses on create: namespace must exist, uid, Pending."""
        self._admit_namespaced(request)
        request.data["status"] = {"phase": "Pending"}

    def _admit_namespaced(self, request: kmock.Request) -> None:
        ns = request.namespace or ""
        if not any(o["metadata"]["name"] == ns for o in self.live(NAMESPACES, None)):
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f'namespaces "{ns}" not found')
        data = request.data
        data.setdefault("metadata", {}).update(_meta(data["metadata"]["name"], ns) | data["metadata"])

    async def _sync_daemon_set(self, namespace: str, name: str) -> None:
        """The DaemonSet controller: a pod per node from the current template; pods of an older
        template, or of a deleted DaemonSet, deleted (their processes killed)."""
        key = (DAEMONSETS, namespace, name)
        ds = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None
        template = ds["spec"]["template"] if ds else None
        owned = [p for p in self.live(PODS, namespace)
                 if any(o.get("kind") == "DaemonSet" and o.get("name") == name
                        for o in p["metadata"].get("ownerReferences", []))]
        for pod in owned:
            if template is None or pod["metadata"].get("annotations", {}).get("template") != json.dumps(template):
                self.objects[PODS, namespace, pod["metadata"]["name"]].delete()
                await self._kill((namespace, pod["metadata"]["name"]))
        if template is None:
            return
        have = {p["spec"]["nodeName"] for p in self.live(PODS, namespace)
                if any(o.get("name") == name for o in p["metadata"].get("ownerReferences", []))}
        generation = sum(1 for k in self.objects if k[0] == PODS and k[2].startswith(f"{name}-"))
        for node in self.lab.nodes:
            if node.name in have:
                continue
            pod_name = f"{name}-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node.name}/{generation}').hex[:5]}"
            meta = _meta(pod_name, namespace, labels=dict(template["metadata"].get("labels", {})),
                         annotations={"template": json.dumps(template)},
                         ownerReferences=[{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name,
                                           "uid": ds["metadata"].get("uid", ""), "controller": True}])
            spec = json.loads(json.dumps(template["spec"])) | {"nodeName": node.name}
            self.objects[PODS, namespace, pod_name] = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                                                      "spec": spec, "status": {"phase": "Pending"}}
            self._start(namespace, pod_name)

    def _add_ephemeral(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (PODS, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f'pods "{request.name}" not found')
        pod = self.objects[key].raw
        have = {c["name"]: c for c in pod["spec"].get("ephemeralContainers", [])}
        for c in request.data.get("spec", {}).get("ephemeralContainers", []):
            if c["name"] in have and have[c["name"]] != c:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=(
                    f'Pod "{request.name}" is invalid: spec.ephemeralContainers: Forbidden: existing ephemeral '
                    "containers may not be changed"))
            have[c["name"]] = c
        spec = pod["spec"] | {"ephemeralContainers": list(have.values())}
        self.objects[key].patch({"spec": spec})
        for c in have.values():
            self._run_ephemeral(request.namespace or "", request.name or "", c)
        return aiohttp.web.json_response(self.objects[key].raw)

    def _run_ephemeral(self, namespace: str, name: str, container: dict[str, Any]) -> None:
        async def start() -> None:
            await asyncio.sleep(RUNNING_AFTER)
            key = (PODS, namespace, name)
            pod = self.objects[key].raw
            statuses = {s["name"]: s for s in pod.get("status", {}).get("ephemeralContainerStatuses", [])}
            if container["name"] in statuses:
                return
            state = ({"waiting": {"reason": "ErrImagePull", "message": f"{container['image']}: not found"}}
                     if container["image"].startswith(UNPULLABLE) else {"running": {"startedAt": _now()}})
            statuses[container["name"]] = {"name": container["name"], "image": container["image"], "imageID": "",
                                           "ready": False, "restartCount": 0, "state": state}
            self.objects[key].patch({"status": pod.get("status", {}) | {
                "ephemeralContainerStatuses": list(statuses.values())}})
        task = asyncio.get_running_loop().create_task(start())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pod_path(self, namespace: str, pod: str, arg: str) -> str:
        if not arg.startswith(POD_RUN):
            return arg
        root = self.pod_dirs / namespace / pod
        root.mkdir(parents=True, exist_ok=True)
        return str(root / arg[len(POD_RUN):])

    def _run_argv(self, namespace: str, pod: str, argv: Sequence[str]) -> list[str]:
        """A container's command as the stand-in runs it: the repo's agent under this Python, a
        pod's /run/tracer/ its own directory."""
        argv = [sys.executable, str(AGENT), *argv[2:]] if list(argv[:2]) == ["python3", "/agent.py"] else list(argv)
        return [self._pod_path(namespace, pod, a) for a in argv]

    def _start(self, namespace: str | None, name: str) -> None:
        async def start() -> None:
            await asyncio.sleep(RUNNING_AFTER)
            key = (PODS, namespace, name)
            if key in self.objects and not self.objects[key].deleted:
                pod = self.objects[key].raw
                node = pod.get("spec", {}).get("nodeName")
                ip = self.lab.node(node).underlay_ip if node else None
                status = running_status(pod, ip)
                if any(c.get("image", "").startswith(UNPULLABLE) for c in pod["spec"]["containers"]):
                    status = {"phase": "Pending", "containerStatuses": [
                        {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                         "state": {"waiting": {"reason": "ErrImagePull", "message": f"{c['image']}: not found"}}}
                        for c in pod["spec"]["containers"]]}
                elif (command := pod["spec"]["containers"][0].get("command")) and command[0] != "sleep":
                    await self._run_main(namespace or "", name, pod, command)
                self.objects[key].patch({"status": status})
        task = asyncio.get_running_loop().create_task(start())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_main(self, namespace: str, name: str, pod: dict[str, Any], command: Sequence[str]) -> None:
        """A container's own command, as its main process (killed with the pod); its output is
        the container's log, which nobody reads here."""
        proc = await _Process.start(["ip", "netns", "exec", self._netns(pod), *self._run_argv(namespace, name, command)],
                                    stdin=False)
        self.processes.setdefault((namespace, name), set()).add(proc)
        self.spawned.append((proc.pid, namespace, name, tuple(command)))
        if "--serve" in command:  # the readiness probe's `test -S SOCKET`
            path = Path(self._pod_path(namespace, name, command[command.index("--serve") + 1]))
            for _ in range(400):
                if path.exists() or proc.returncode is not None:
                    break
                await asyncio.sleep(0.025)

    async def _kill(self, key: tuple[str, str]) -> None:
        procs = self.processes.pop(key, set())
        for proc in procs:
            proc.kill()
        for proc in procs:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)

    async def kill_all(self) -> None:
        for key in list(self.processes):
            await self._kill(key)

    def _netns(self, pod: dict[str, Any]) -> str:
        if pod.get("spec", {}).get("hostNetwork"):
            return self.lab.netns(pod["spec"]["nodeName"])
        return self.lab.netns(pod["metadata"]["name"])

    async def _exec(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        try:
            return await self._exec_ws(request)
        except Exception:
            traceback.print_exc()  # kmock can only close a started websocket: say why here
            raise

    async def _exec_ws(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (PODS, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f'pods "{request.name}" not found')
        pod = self.objects[key].raw
        if pod.get("status", {}).get("phase") != "Running":
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message=f"pod {request.name} is not running")
        raw = request._raw_request
        assert raw is not None
        argv = raw.query.getall("command", [])
        attach_stdin = raw.query.get("stdin") == "true"
        container = raw.query.get("container")
        self.exec_log.append((request.namespace or "", request.name or "", tuple(argv)))
        self.exec_containers.append((request.namespace or "", request.name or "", container, tuple(argv)))
        ws = aiohttp.web.WebSocketResponse(protocols=self.protocols, max_msg_size=0)
        await ws.prepare(raw)
        run_argv = self._run_argv(request.namespace or "", request.name or "", argv)
        sender = _Sender(ws)
        if tuple(argv) in self.replies and (reply := self.replies[tuple(argv)]) is not None:
            code, out, err = reply
            for channel, data in ((STDOUT, out), (STDERR, err)):
                if data:
                    await sender.send(channel, data)
            self.ended.append((request.namespace or "", request.name or "", tuple(argv), code))
            await sender.send(STATUS, json.dumps(status_object(code, argv)).encode())
            await ws.close()
            return ws
        lacks = bool(argv) and argv[0] in self.lacking.get(container or "", set())
        if not run_argv or shutil.which(run_argv[0]) is None or tuple(argv) in self.replies or lacks:
            error = f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH'
            await sender.send(STATUS, json.dumps(status_object(None, argv, error)).encode())
            await ws.close()
            return ws
        proc = await _Process.start(["ip", "netns", "exec", self._netns(pod), *run_argv], stdin=attach_stdin)
        owner = (request.namespace or "", request.name or "")
        self.processes.setdefault(owner, set()).add(proc)
        self.spawned.append((proc.pid, *owner, tuple(argv)))
        reader = asyncio.create_task(_stdin_from(ws, proc, sender.protocol,
                                                 lambda data: self.stdin_log.append((tuple(argv), data))))
        try:
            await asyncio.gather(_pump(proc.stdout, sender, STDOUT), _pump(proc.stderr, sender, STDERR))
            code = await proc.wait()
            code = 128 - code if code < 0 else code  # killed by a signal: 137 as a container runtime says
            self.ended.append((*owner, tuple(argv), code))
            await sender.send(STATUS, json.dumps(status_object(code, argv)).encode())
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away; the process goes on until it ends or its pod is deleted
        finally:
            reader.cancel()
            if proc.returncode is not None:  # still running: it stays its pod's, to be killed with it
                self.processes.get(owner, set()).discard(proc)
            await ws.close()
        return ws


class _Process:
    """A command run with subprocess.Popen, its pipes on the loop and its end awaited in a thread.

    Not asyncio's subprocesses: they depend on the process-wide child watcher, which pyshark
    (the tshark tests, same process) replaces with one bound to its own, by then closed, loop.
    """

    def __init__(self, popen: subprocess.Popen, stdin: asyncio.WriteTransport | None,
                 stdout: asyncio.StreamReader, stderr: asyncio.StreamReader):
        self.popen = popen
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    @classmethod
    async def start(cls, argv: Sequence[str], *, stdin: bool) -> _Process:
        loop = asyncio.get_running_loop()
        popen = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

        async def reader(pipe: Any) -> asyncio.StreamReader:
            r = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(r), pipe)
            return r

        writer = (await loop.connect_write_pipe(asyncio.Protocol, popen.stdin))[0] if stdin else None
        return cls(popen, writer, await reader(popen.stdout), await reader(popen.stderr))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.popen.wait)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


class _Sender:
    def __init__(self, ws: aiohttp.web.WebSocketResponse):
        self.ws = ws
        self.protocol = ws.ws_protocol
        self._lock = asyncio.Lock()

    async def send(self, channel: int, data: bytes) -> None:
        async with self._lock:
            await self.ws.send_bytes(bytes([channel]) + data)


async def _pump(stream: asyncio.StreamReader | None, sender: _Sender, channel: int) -> None:
    assert stream is not None
    while chunk := await stream.read(65536):
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await sender.send(channel, chunk)


async def _stdin_from(ws: aiohttp.web.WebSocketResponse, proc: _Process, protocol: str | None,
                      log: Callable[[bytes], None]) -> None:
    """Frames on channel 0 to the process's stdin; v5's close signal or the end of the stream close it."""
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                data = msg.data
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = msg.data.encode("utf-8")
            else:
                break
            if not data:
                continue
            if data[0] == CLOSE and protocol == V5 and data[1:2] == bytes([STDIN]):
                _close_stdin(proc)
            elif data[0] == STDIN and proc.stdin is not None and not proc.stdin.is_closing():
                log(data[1:])
                proc.stdin.write(data[1:])
    finally:
        _close_stdin(proc)  # as the kubelet does when the stream ends


def _close_stdin(proc: _Process) -> None:
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()


class StandIn:
    """The stand-in API server on its own thread, with a kubeconfig pointing at it."""

    def __init__(self, lab: Lab, *, protocols: Iterable[str] = (V5, V4), namespace: str = "default"):
        self.lab = lab
        self.protocols = tuple(protocols)
        self.namespace = namespace
        self.handler: LabKubernetes | None = None
        self.url = ""
        self._dir = Path(tempfile.mkdtemp(prefix="tracer-kmock-"))
        self.kubeconfig = self._dir / "kubeconfig"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-stand-in", daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or self.handler is None:
            raise RuntimeError("the stand-in API server did not start") from self._error
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "stand-in"}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "tester", "namespace": self.namespace}}],
        }))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        handler = LabKubernetes(lab=self.lab, protocols=self.protocols)
        handler.load_lab()
        async with handler, kmock.Server(handler) as server:
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await handler.kill_all()
                shutil.rmtree(handler.pod_dirs, ignore_errors=True)

    def call(self, fn: Any, timeout: float = 10) -> Any:
        """Run `fn()` on the server's loop (objects are the loop's to touch) and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        assert self.handler is not None
        handler = self.handler
        return self.call(lambda: handler.live(PODS, namespace))

    def snapshot(self) -> dict[str, list[Any]]:
        """Copies of the exec, end and stdin logs (taken on the server's loop)."""
        assert self.handler is not None
        h = self.handler
        return self.call(lambda: {"exec": list(h.exec_log), "ended": list(h.ended), "stdin": list(h.stdin_log),
                                  "spawned": list(h.spawned), "containers": list(h.exec_containers)})

    def process_count(self) -> int:
        assert self.handler is not None
        handler = self.handler
        return self.call(lambda: sum(1 for procs in handler.processes.values() for p in procs if p.returncode is None))

    def add_pod(self, obj: dict[str, Any]) -> None:
        self.add(PODS, obj)

    def add(self, resource: kmock.resource, obj: dict[str, Any]) -> None:
        """Store an object (a pod, Service, EndpointSlice) as if it had been created."""
        assert self.handler is not None
        handler = self.handler
        meta = obj["metadata"]
        self.call(lambda: handler.objects.__setitem__((resource, meta.get("namespace"), meta["name"]), obj))

    def remove(self, resource: kmock.resource, namespace: str | None, name: str) -> None:
        """Delete an object added with `add` (gone from lists and gets)."""
        assert self.handler is not None
        handler = self.handler
        self.call(lambda: handler.objects[resource, namespace, name].delete())

    @contextlib.contextmanager
    def replying(self, replies: dict[tuple[str, ...], tuple[int, bytes, bytes] | None]) -> Iterator[None]:
        """While inside, these commands get these replies instead of running (None: not found)."""
        assert self.handler is not None
        handler = self.handler
        self.call(lambda: handler.replies.update(replies))
        try:
            yield
        finally:
            self.call(lambda: [handler.replies.pop(argv, None) for argv in replies])

    @contextlib.contextmanager
    def without(self, container: str, *programs: str) -> Iterator[None]:
        """While inside, the containers named `container` lack these programs (a distroless image)."""
        assert self.handler is not None
        handler = self.handler
        self.call(lambda: handler.lacking.setdefault(container, set()).update(programs))
        try:
            yield
        finally:
            self.call(lambda: handler.lacking.pop(container, None))

    @contextlib.contextmanager
    def forbidding(self, *resources: str) -> Iterator[None]:
        """While inside, the tester's role lacks these resources (plurals): the API answers 403."""
        assert self.handler is not None
        handler = self.handler
        self.call(lambda: handler.forbidden.update(resources))
        try:
            yield
        finally:
            self.call(lambda: handler.forbidden.difference_update(resources))
