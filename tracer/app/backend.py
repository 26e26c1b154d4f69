"""The backend of a follow or watch run, opened first and light: nothing of the run's own
machinery is imported before it, so that the lab's agents start while the rest imports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tracer.app.signals import sigterm_interrupts
from tracer.cluster.backends import AGENT_MODES, BACKENDS, BackendOptions, make_backend

__all__ = ["AGENT_MODES", "BACKENDS", "BackendOptions", "open_backend"]

if TYPE_CHECKING:
    from tracer.cluster.ports import FollowBackend


@contextlib.contextmanager
def open_backend(src: str, dst: str, run_id: str, options: BackendOptions) -> Iterator[FollowBackend]:
    """The backend of a follow or watch run, SIGTERM taken as Ctrl-C, closed whatever happens
    (idempotent: the run closes it itself; this covers what comes before)."""
    with sigterm_interrupts():
        fb = make_backend(options, run_id=run_id)
        try:
            # The pods the run is about, early, if the backend can use that (the lab starts their
            # nodes' agents at once, while tracer still imports and discovers).
            expect = getattr(fb, "expect_pods", None)
            if expect is not None:
                expect(src, dst)
            yield fb
        finally:
            fb.close()
