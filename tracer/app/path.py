"""`tracer path`'s use case: open the backend the options pick, discover the way, close it."""

from __future__ import annotations

from tracer.app.signals import sigterm_interrupts, uninterrupted
from tracer.cluster.backends import BackendOptions, discovery_backend
from tracer.app.target import Request, request_way
from tracer.errors import UsageError
from tracer.model import Way


def find_way(src: str, dst: str, options: BackendOptions, points: tuple[str, ...] = ()) -> Way:
    """The expected way from pod `src` to pod `dst` (see find_request)."""
    return find_request(src, dst, options, points).way


def find_request(src: str, dst: str, options: BackendOptions, points: tuple[str, ...] = ()) -> Request:
    """The expected way from pod `src` to DST (and, for a URL by name, the DNS query's way).
    SIGTERM ends it as Ctrl-C does, and the
    backend is closed whatever happens (on Kubernetes that deletes the capture pods discovery
    read the nodes through), a second Ctrl-C waiting until it is."""
    if src == dst:  # (the pod's way to itself is `dev lo`: no capture point, nothing to show)
        raise UsageError(f"source and destination are the same pod ({src})", hint="give two pods: tracer path SRC DST")
    with sigterm_interrupts():
        backend = discovery_backend(options)
        try:
            return request_way(backend, src, dst, 80, "/", points)
        finally:
            with uninterrupted():
                backend.close()
