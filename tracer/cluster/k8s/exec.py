"""Commands in containers over the exec websocket, bytes intact both ways.

The official client's `stream()` in binary mode gives a `WSClient` that sorts frames into
channels (0 stdin, 1 stdout, 2 stderr, 3 status); the exit code is read here from the Status
object on channel 3, because the client's own `returncode` assumes a number in every failure
and breaks when the command could not even start. Each exec gets its own ApiClient: `stream()`
swaps `call_api` on the client it is handed, so two execs must never share one.

The stream client opens its websocket without a timeout: a server (or a proxy, a load balancer)
that takes the connection and never answers the upgrade would hold tracer forever. Its
`WebSocket` is therefore one whose connect and handshake time out (`HANDSHAKE_TIMEOUT`); the
stream after the handshake blocks as before (`pump()` waits with its own timeout).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import time
from collections.abc import Sequence
from typing import Any

import websocket
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream, ws_client
from kubernetes.stream.ws_client import V5_CHANNEL_PROTOCOL
from websocket import WebSocketException, WebSocketTimeoutException

from tracer.cluster.ports import ExecResult
from tracer.errors import ClusterError
from tracer.cluster.k8s.client import REQUEST_TIMEOUT, Cluster, api_errors

STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
EXEC_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = REQUEST_TIMEOUT
"""Seconds the API server may take to take an exec's connection and answer its websocket upgrade."""
NO_EXECUTABLE = re.compile(
    r'executable file\b.*\bnot found'  # runc: exec: "curl": executable file not found in $PATH; crun alike
    r'|\bexec:? "?[^":]+"?: (?:stat [^:]+: )?no such file or directory',  # a path that is not there
    re.IGNORECASE)
"""The container runtime's words for a command that does not exist (a shell's 127)."""
NOT_EXECUTABLE = re.compile(r'\bexec:? "?[^":]+"?: (?:stat [^:]+: )?permission denied', re.IGNORECASE)
"""... and for one that exists but may not be run (a shell's 126)."""

_handshake_timeout: contextvars.ContextVar[float] = contextvars.ContextVar("handshake_timeout",
                                                                           default=HANDSHAKE_TIMEOUT)


class _HandshakeTimeoutWebSocket(websocket.WebSocket):
    """websocket-client's WebSocket with a timeout on connecting and the upgrade, none after."""

    def connect(self, url: str, **options: Any) -> None:
        options.setdefault("timeout", _handshake_timeout.get())
        super().connect(url, **options)
        self.settimeout(None)


if ws_client.WebSocket is websocket.WebSocket:  # (what ws_client.create_websocket builds)
    ws_client.WebSocket = _HandshakeTimeoutWebSocket


def exit_status(raw: bytes, *, what: str = "the command", namespace: str | None = None,
                pod: str | None = None) -> tuple[int, str]:
    """(exit code, why) from the Status object the API server sends on channel 3.

    `{"status":"Success"}` is 0; `NonZeroExitCode` carries the code in a cause of reason
    `ExitCode`; anything else (an `InternalError`) means the command never ran. When the
    runtime says the executable is not there that is 127, when it may not be run 126, as a shell
    says it (callers take 127 for "the pod has no curl"). Anything else, e.g. `container not
    found` (the container has ended, is restarting, or is not the pod's), is no exit code of
    `what` at all: a ClusterError that says what happened (`namespace`/`pod` for its hint).
    """
    if not raw.strip():
        raise ClusterError("the exec stream ended without an exit status",
                           hint="the API server or kubelet dropped the connection; try again")
    try:
        status = json.loads(raw)
    except ValueError as e:
        raise ClusterError(f"unreadable exec status: {raw[:200]!r}") from e
    if status.get("status") == "Success":
        return 0, ""
    causes = (status.get("details") or {}).get("causes") or []
    if status.get("reason") == "NonZeroExitCode":
        for cause in causes:
            if cause.get("reason") == "ExitCode":
                return int(cause["message"]), ""
    message = status.get("message") or json.dumps(status)
    if NO_EXECUTABLE.search(message):
        return 127, message
    if NOT_EXECUTABLE.search(message):
        return 126, message
    describe = f"kubectl describe pod -n {namespace} {pod}" if namespace and pod else "kubectl describe pod"
    raise ClusterError(f"{what} could not run: {message}",
                       hint=f"the container may have ended or be restarting, or its runtime failed: {describe}")


def _open(api: client.ApiClient, pod: str, namespace: str, *, what: str, handshake_timeout: float,
          **kwargs: Any) -> Any:
    """The exec's websocket (the stream client's WSClient), once the API server has answered the
    upgrade; a ClusterError when it has not within `handshake_timeout` seconds."""
    token = _handshake_timeout.set(handshake_timeout)
    try:
        return stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, namespace, stdout=True,
                      stderr=True, tty=False, binary=True, _preload_content=False, **kwargs)
    except ApiException as e:
        if isinstance(e.__context__, (WebSocketTimeoutException, TimeoutError)):
            raise ClusterError(f"the API server did not answer the {what} within {handshake_timeout:g} s",
                               hint="check the API server is up (kubectl get --raw /readyz); a proxy or load "
                                    "balancer in front of it must pass websocket upgrades (kubectl exec needs "
                                    "them too)") from e
        raise
    finally:
        _handshake_timeout.reset(token)


class ExecStream:
    """One command running in a container; stdout/stderr/status collected as bytes."""

    def __init__(self, cluster: Cluster, *, namespace: str, pod: str, container: str | None,
                 argv: Sequence[str], stdin: bool, handshake_timeout: float = HANDSHAKE_TIMEOUT):
        self.namespace, self.pod = namespace, pod
        self.where = f"{namespace}/{pod}"
        self.argv = list(argv)
        self._api = cluster.new_api_client()
        what = f"exec `{' '.join(self.argv)}` in pod {self.where}"
        try:
            with api_errors(what):
                self._ws = _open(self._api, pod, namespace, what=what, handshake_timeout=handshake_timeout,
                                 command=self.argv, container=container, stdin=stdin)
        except BaseException:
            self._api.close()
            raise
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._status = bytearray()
        self._returncode: int | None = None
        self._released = False

    @property
    def protocol(self) -> str | None:
        """The negotiated channel protocol (v5.channel.k8s.io can half-close stdin, v4 cannot)."""
        return self._ws.subprotocol

    def is_open(self) -> bool:
        return not self._released and self._ws.is_open()

    def pump(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds for frames and sort what came into the buffers."""
        if self.is_open():
            try:
                self._ws.update(timeout=timeout)
            except (WebSocketException, OSError):
                self._ws.close()  # the server went away: what was buffered is all there is
        for channel, buf in ((STDOUT, self.stdout), (STDERR, self.stderr), (STATUS, self._status)):
            data = self._ws.read_channel(channel)
            if data:
                buf += data

    def write(self, data: bytes) -> None:
        try:
            self._ws.write_stdin(bytes(data))
        except (WebSocketException, OSError) as e:
            raise ClusterError(f"cannot write to `{self.argv[0]}` in pod {self.where}: the exec stream is closed") from e

    def close_stdin(self) -> bool:
        """Half-close stdin (v5 only); False when the protocol cannot say it."""
        if self.protocol != V5_CHANNEL_PROTOCOL or not self.is_open():
            return False
        with contextlib.suppress(WebSocketException, OSError):
            self._ws.close_channel(STDIN)
        return True

    def returncode(self) -> int | None:
        """The command's exit code once the stream has ended, else None."""
        if self._returncode is None and not self._ws.is_open():
            self.pump(0)
            code, why = exit_status(bytes(self._status), what=f"`{' '.join(self.argv)}` in pod {self.where}",
                                    namespace=self.namespace, pod=self.pod)
            if why:
                self.stderr += why.encode() + b"\n"
            self._returncode = code
        return self._returncode

    def wait(self, timeout: float | None) -> int:
        """Pump until the command has ended (None: as long as it takes); its exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_open():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ClusterError(f"`{' '.join(self.argv)}` in pod {self.where} did not finish within {timeout:.0f} s")
            self.pump(left)
        code = self.returncode()
        assert code is not None
        return code

    def release(self) -> None:
        """Close the websocket (the kubelet closes the command's stdin) and the ApiClient. Idempotent."""
        if self._released:
            return
        self._released = True
        with contextlib.suppress(Exception):
            self._ws.close()
        with contextlib.suppress(Exception):
            self._api.close()


def run(cluster: Cluster, *, namespace: str, pod: str, container: str | None, argv: Sequence[str],
        timeout: float | None = EXEC_TIMEOUT) -> ExecResult:
    """Run `argv` in a container to its end; its exit code, stdout and stderr as bytes."""
    s = ExecStream(cluster, namespace=namespace, pod=pod, container=container, argv=argv, stdin=False)
    try:
        code = s.wait(timeout)
        return ExecResult(returncode=code, stdout=bytes(s.stdout), stderr=bytes(s.stderr))
    finally:
        s.release()


class ExecChannel:
    """A long-running command (the capture agent) as an `AgentChannel`: stdin and stdout raw.

    `pod_deadline`: the activeDeadlineSeconds of the pod it runs in, which ends it when passed.
    """

    def __init__(self, stream_: ExecStream, *, pod_deadline: int | None = None):
        self.stream = stream_
        self.pod_deadline = pod_deadline

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        s = self.stream
        while len(s.stdout) == 0 and s.is_open():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no output from `{s.argv[0]}` in pod {s.where} within {timeout:g} s")
            s.pump(left)
        if len(s.stdout) == 0:
            s.pump(0)
        data = bytes(s.stdout[:n])
        del s.stdout[:n]
        return data

    def diagnostics(self) -> str:
        """What the agent wrote on stderr so far (shown with its errors)."""
        if self.stream.is_open():
            self.stream.pump(0)
        return bytes(self.stream.stderr).decode(errors="replace")

    def close(self) -> None:
        """EOF on the agent's stdin (it stops and exits), then let go of the stream."""
        self.stream.close_stdin()
        self.stream.release()

    def exit_status(self) -> int | None:
        if self.stream.is_open():
            self.stream.pump(0)
        if self.stream.is_open():
            return None
        try:
            return self.stream.returncode()
        except ClusterError:
            return None

    def exit_reason(self, code: int) -> str | None:
        """Why a command in a pod ends with `code` without failing by itself, if the pod tells."""
        if code != 137:  # SIGKILL, as container runtimes say it
            return None
        if self.pod_deadline is None:
            return "the node ran out of memory"
        return (f"its pod's deadline (activeDeadlineSeconds {self.pod_deadline} s) passed, "
                "or the node ran out of memory")
