"""`tracer follow SRC DST`: capture on every hop of the way while curl runs, then show each hop."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator

import click

from tracer.errors import UsageError

BACKENDS = ("lab", "kubernetes")


def backend_options(f):
    """--backend and the Kubernetes options, shared with `tracer watch`."""
    opts = [
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Where the pods run. Default: kubernetes if --kubeconfig or --context is given, "
                          "or if no lab is up and $KUBECONFIG is set; else lab."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubernetes: the kubeconfig file."),
        click.option("--context", help="Kubernetes: the kubeconfig context."),
        click.option("--namespace", "-n", help="Kubernetes: the namespace of SRC and DST."),
        click.option("--capture-image", metavar="IMAGE", help="Kubernetes: the capture agent's image."),
        click.option("--capture-namespace", metavar="NS", help="Kubernetes: where the capture pods run."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


def choose_backend(backend, kubeconfig, context, capture_image, capture_namespace) -> str:
    """"lab" or "kubernetes", as --backend and the Kubernetes options pick (see --backend)."""
    k8s_given = kubeconfig or context or capture_image or capture_namespace
    if backend is None:
        backend = "kubernetes" if k8s_given or (os.environ.get("KUBECONFIG") and not _lab_up()) else "lab"
    if backend == "lab" and k8s_given:
        raise UsageError("--kubeconfig, --context and --capture-* apply to --backend kubernetes only")
    return backend


def make_backend(backend, kubeconfig, context, namespace, capture_image, capture_namespace, run_id):
    """The FollowBackend the options pick (see --backend)."""
    if choose_backend(backend, kubeconfig, context, capture_image, capture_namespace) == "lab":
        from tracer.cluster.lab.backend import LabFollowBackend
        from tracer.cluster.lab import Lab, require_root

        require_root("follow")
        return LabFollowBackend(Lab.load(), run_id=run_id)
    try:
        from tracer.cluster.k8s.backend import make_backend as make_k8s
    except ImportError:
        raise UsageError("the Kubernetes backend is not available yet", hint="use --backend lab") from None
    return make_k8s(kubeconfig=kubeconfig, context=context, namespace=namespace, capture_image=capture_image,
                    capture_namespace=capture_namespace, run_id=run_id)


def _lab_up() -> bool:
    from tracer.cluster.lab import StateStore

    return StateStore.from_env().load() is not None


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True, help="DST's TCP port.")
@click.option("--path", "url_path", default="/get", show_default=True, help="The URL path curl asks for.")
@click.option("--count", type=click.IntRange(1, 100), default=1, show_default=True, help="Send the request N times.")
@click.option("--save", type=click.Path(file_okay=False), metavar="DIR",
              help="Keep the captures as DIR/<node>/<interface>.pcap plus DIR/path.json (tracer analyze DIR).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the tracer.trace/v1 document with a `follow` key (curl results, captures).")
@click.option("--pcapng", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write one merged pcapng, an interface per point, each frame commented with its hop.")
@click.option("--all-flows", is_flag=True,
              help="Show every flow the captures hold, not only the connections this run's curl made.")
@click.option("--live", is_flag=True, help="Send a request every second and light up each hop live (= tracer watch).")
@click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="How long each step may take: agents getting ready, each request, collecting.")
@backend_options
@click.option("--timings-file", hidden=True, type=click.Path(dir_okay=False), help="Write the phases' durations (bench).")
@click.option("--iterations", hidden=True, type=click.IntRange(1), help="--live: stop after N requests (tests).")
def command(src, dst, port, url_path, count, save, output, pcapng, all_flows, live, timeout, backend, kubeconfig, context,
            namespace, capture_image, capture_namespace, timings_file, iterations):
    """Capture on every hop of the way while SRC's curl asks DST, then show the packets hop by hop.

    Starts a capture agent on each node of the way (`tracer path SRC DST`), each listening on
    exactly that node's points with a kernel filter for this flow, runs
    `curl http://<DST ip>:PORT/PATH` in SRC, collects the captures and shows them as
    `tracer analyze` does. Nothing the run started is left behind, even on Ctrl-C.

    \b
    Examples:
      tracer follow curl httpbin
      tracer follow curl httpbin --path /delay/1 --count 3 --save run1 && tracer analyze run1
      tracer follow curl httpbin --live
    """
    if not url_path.startswith("/"):
        url_path = "/" + url_path
    run_id = os.urandom(4).hex()
    with run_backend(src, dst, run_id, backend, kubeconfig, context, namespace, capture_image, capture_namespace) as fb:
        from tracer.app.follow import FollowRequest

        req = FollowRequest(src=src, dst=dst, port=port, path=url_path, count=count, timeout=timeout, save=save,
                            output=output, pcapng=pcapng, all_flows=all_flows, run_id=run_id)
        if live:
            from tracer.app.watch import watch

            watch(fb, req, iterations=iterations)
            return
        from tracer.app.follow import run

        with _status() as progress:
            run(fb, req, out=sys.stdout, progress=progress, timings_file=timings_file)


@contextlib.contextmanager
def run_backend(src: str, dst: str, run_id: str, *backend_args) -> Iterator:
    """The backend of a follow or watch run (make_backend's options), SIGTERM taken as Ctrl-C,
    closed whatever happens (idempotent: the run closes it itself; this covers what comes before)."""
    from tracer.app.signals import sigterm_interrupts

    with sigterm_interrupts():
        fb = make_backend(*backend_args, run_id)
        try:
            # The pods the run is about, early, if the backend can use that (the lab starts their
            # nodes' agents at once, while tracer still imports and discovers).
            expect = getattr(fb, "expect_pods", None)
            if expect is not None:
                expect(src, dst)
            yield fb
        finally:
            fb.close()


class _status:
    """A spinner on stderr while the run works (nothing when stderr is not a terminal)."""

    def __enter__(self):
        self.status = None
        if not sys.stderr.isatty():  # (then not even rich's import, ~30 ms, before the run starts)
            return self.update
        from rich.console import Console

        self.console = Console(stderr=True)
        self.status = self.console.status("") if self.console.is_terminal else None
        if self.status:
            self.status.start()
        return self.update

    def update(self, what: str | None) -> None:
        if self.status is None:
            return
        if what is None:
            self.status.stop()
        else:
            self.status.update(what)

    def __exit__(self, *exc):
        if self.status:
            self.status.stop()
