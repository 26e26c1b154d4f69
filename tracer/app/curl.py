"""The request a follow traces: curl in the source pod, and what it answered."""

from __future__ import annotations

from tracer.cluster.ports import ExecResult, FollowBackend
from tracer.errors import NotFoundError
from tracer.model import Way
from tracer.model.follow import CurlResult

CURL_ERRORS = {
    6: "could not resolve the host", 7: "could not connect (refused or no route)", 28: "timed out",
    52: "empty reply from the server", 56: "the connection was reset",
}


def curl_argv(url: str, max_time: float) -> list[str]:
    return ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{local_port} %{size_download}",
            "--max-time", f"{max_time:g}", url]


def fire(backend: FollowBackend, way: Way, url: str, max_time: float) -> CurlResult:
    """One request from the source pod with its own curl."""
    res = backend.exec_request(way.src.pod, curl_argv(url, max_time))
    if _no_curl(res):
        image = getattr(backend, "curl_image", None)
        raise NotFoundError(
            f"pod {way.src.pod.name} has no curl to send the request with"
            + (f" (nor has the image {image} of --curl-image)" if image else ""),
            hint=("--curl-image IMAGE: curl from a container of that image in the pod (e.g. --curl-image "
                  "curlimages/curl; Kubernetes), or follow from a pod whose image has curl") if not image else
                 "pick an image with curl and sleep, e.g. --curl-image curlimages/curl",
        )
    words = res.stdout.decode(errors="replace").split()
    status = int(words[0]) if words and words[0].isdigit() and words[0] != "000" else None
    took = float(words[1]) if len(words) > 1 and _is_float(words[1]) else None
    port = int(words[2]) if len(words) > 2 and words[2].isdigit() and words[2] != "0" else None
    size = int(words[3]) if len(words) > 3 and words[3].isdigit() and status is not None else None
    error = None
    if res.returncode != 0:
        error = CURL_ERRORS.get(res.returncode) or (res.stderr.decode(errors="replace").strip()[-200:]
                                                     or f"curl exited with {res.returncode}")
    return CurlResult(status=status, time=took, exit_code=res.returncode, error=error, local_port=port, bytes=size)


def _no_curl(res: ExecResult) -> bool:
    err = res.stderr.decode(errors="replace").lower()
    if res.returncode in (126, 127):
        return True
    return not res.stdout and ("curl" in err and ("not found" in err or "no such file" in err))


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
