"""`tracer follow SRC DST`: capture on every hop of the way while curl runs, then show each hop."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tracer.app.backend import BackendOptions
from tracer.commands.options import point_option, request_backend_options
from tracer.errors import ExitCode, UsageError
from tracer.render.outputs import OUTPUTS, VIEWS
from tracer.render.progress import Spinner

SUMMARY_HINT = "--save DIR, then tracer analyze DIR --flow N for one flow's hops"
"""What the summary view tells a follow to do for a flow's hops (follow itself has no --flow)."""

if TYPE_CHECKING:
    from tracer.model.analysis import Analysis
    from tracer.model.follow import FollowRun


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True, help="DST's TCP port.")
@click.option("--path", "url_path", default="/get", show_default=True, help="The URL path curl asks for.")
@click.option("--count", type=click.IntRange(1, 100), default=1, show_default=True, help="Send the request N times.")
@click.option("--save", type=click.Path(file_okay=False), metavar="DIR",
              help="Keep the captures as DIR/<node>/<interface>.pcap plus DIR/path.json (tracer analyze DIR).")
@click.option("--output", "-o", type=click.Choice(list(OUTPUTS)), default="text", show_default=True,
              help="json: the tracer.trace/v1 document with a `follow` key (curl results, captures).")
@click.option("--pcapng", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write one merged pcapng, an interface per point, each frame commented with its hop.")
@click.option("--view", type=click.Choice(VIEWS), default=None,
              help="The text view: hops (a table per packet), grid (a row per packet, a column per point, a mark "
                   "per hop: for a class), summary. Default: the grid, the summary for many packets.")
@click.option("--all-flows", is_flag=True,
              help="Show every flow the captures hold, not only the connections this run's curl made.")
@click.option("--live", is_flag=True, help="Send a request every second and light up each hop live (= tracer watch).")
@click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="How long each step may take: agents getting ready, each request, collecting.")
@point_option
@request_backend_options
@click.option("--timings-file", hidden=True, type=click.Path(dir_okay=False), help="Write the phases' durations (bench).")
@click.option("--iterations", hidden=True, type=click.IntRange(1), help="--live: stop after N requests (tests).")
def command(src, dst, port, url_path, count, save, output, pcapng, view, all_flows, live, timeout, points,
            backend: BackendOptions, timings_file, iterations):
    """Capture on every hop of the way while SRC's curl asks DST, then show the packets hop by hop.

    DST is a pod, a Service (`svc/NAME`, or its ClusterIP) or a URL (`http://httpbin/get`,
    resolved by SRC's own resolver): for a Service the way goes to its endpoint, and the view
    shows kube-proxy's DNAT where it happened and the rule that did it (on the lab so far).

    Starts a capture agent on each node of the way (`tracer path SRC DST`), each listening on
    exactly that node's points with a kernel filter for this flow, runs
    `curl http://<DST ip>:PORT/PATH` in SRC, collects the captures and shows them as
    `tracer analyze` does. Nothing the run started is left behind, even on Ctrl-C.

    \b
    Examples:
      tracer follow curl httpbin
      tracer follow curl http://httpbin/get
      tracer follow curl httpbin --path /delay/1 --count 3 --save run1 && tracer analyze run1
      tracer follow curl httpbin --live

    \b
    Exit codes: 0 every request got an HTTP answer (whatever its status), 7 a request got none
    (curl failed: refused, reset, timed out; the hops are shown all the same), 2 bad usage,
    1 the captures could not be saved (--save; the run is shown all the same), 4 no such pod, 5 needs root or RBAC, 6 the cluster or lab failed, 130 interrupted (Ctrl-C
    while the requests run shows what was captured until then; again while collecting quits).
    """
    if not url_path.startswith("/"):
        url_path = "/" + url_path
    if live and (save or output != "text" or pcapng):
        raise UsageError("--live shows a live view: --save, --output json and --pcapng do not apply",
                         hint="tracer follow without --live saves and prints")
    run_id = os.urandom(4).hex()
    from tracer.app.backend import open_backend

    with open_backend(src, dst, run_id, backend) as fb:
        if live:
            from tracer.app.watch import WatchRequest
            from tracer.commands.watch import watch_live

            watch_live(fb, WatchRequest(src=src, dst=dst, port=port, path=url_path, timeout=timeout, run_id=run_id,
                                            points=points),
                       iterations)
            return
        from tracer.app.follow import FollowRequest, follow

        req = FollowRequest(src=src, dst=dst, port=port, path=url_path, count=count, timeout=timeout, save=save,
                            output=output, pcapng=pcapng, all_flows=all_flows, run_id=run_id, view=view,
                            points=points)

        def present(done: FollowRun, analysis: Analysis) -> None:
            from tracer.render.analysis import show
            from tracer.render.jsondoc import follow_document
            from tracer.render.header import follow_header

            show(analysis, sys.stdout, output=output, pcapng=pcapng, extra_json={"follow": follow_document(done)},
                 header=follow_header(done, analysis.trace), hint=SUMMARY_HINT, view=view, summary=view == "summary")

        _preload_view()
        with Spinner(sys.stderr) as progress:
            result = follow(fb, req, present=present, progress=progress)
    if timings_file:
        Path(timings_file).write_text(json.dumps(asdict(result.timings)) + "\n")
    if result.interrupted:
        raise KeyboardInterrupt  # (shown: now end as interrupted, 130)
    if result.save_error:
        click.secho(f"tracer: {result.save_error}", fg="red", err=True)  # (the run was shown, from elsewhere)
        sys.exit(int(ExitCode.ERROR))
    if any(c.exit_code != 0 for c in result.curls):
        sys.exit(int(ExitCode.NO_ANSWER))  # (the view says how it failed)


def _preload_view() -> None:
    """Import what shows the captures (rich, the correlator: ~50 ms) in a thread, while the
    run mostly waits for processes (discovery's commands, the agents, curl)."""
    import importlib
    import threading

    def load() -> None:
        for name in ("tracer.app.analyze", "tracer.render.analysis", "tracer.render.hops", "tracer.render.header",
                     "tracer.render.jsondoc"):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the real import, later, reports it
                return

    threading.Thread(target=load, name="tracer-preload", daemon=True).start()
