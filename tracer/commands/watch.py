"""`tracer watch SRC DST`: `tracer follow SRC DST --live` under a name made for a classroom."""

from __future__ import annotations

import os

import click

from tracer.app.backend import BackendOptions
from tracer.commands.options import point_option, request_backend_options


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True, help="DST's TCP port.")
@click.option("--path", "url_path", default="/get", show_default=True, help="The URL path curl asks for.")
@click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="How long the agents may take to get ready.")
@point_option
@request_backend_options
@click.option("--iterations", hidden=True, type=click.IntRange(1), help="Stop after N requests (tests).")
def command(src, dst, port, url_path, timeout, points, backend: BackendOptions, iterations):
    """Send a request from SRC to DST every second and light up each packet at each hop, live.

    Encapsulation (⊕), decapsulation (⊖), MAC rewrites and TTLs are marked where they happen.
    Ctrl-C stops it; nothing it started is left behind.
    """
    run_id = os.urandom(4).hex()
    from tracer.app.backend import open_backend

    with open_backend(src, dst, run_id, backend) as fb:
        from tracer.app.watch import WatchRequest

        req = WatchRequest(src=src, dst=dst, port=port, timeout=timeout, run_id=run_id, points=points,
                           path=url_path if url_path.startswith("/") else "/" + url_path)
        watch_live(fb, req, iterations)


def watch_live(fb, req, iterations: int | None) -> None:
    """The live grid on the terminal while app.watch runs (also `tracer follow --live`)."""
    from tracer.app.watch import watch
    from tracer.render.live import LiveScreen

    with LiveScreen() as screen:
        watch(fb, req, display=screen, iterations=iterations)
