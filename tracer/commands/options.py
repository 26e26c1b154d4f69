"""click options more than one command takes."""

from __future__ import annotations

import functools

import click

from tracer.app.backend import AGENT_MODES, BACKENDS, BackendOptions


def backend_options(f, *, curl: bool = False):
    """--backend and the Kubernetes options (follow, watch, path): the command gets them as one
    `backend` (a BackendOptions), what tracer.cluster.backends builds the backend from.
    `curl`: --curl-image too (the commands that send a request: request_backend_options)."""
    @functools.wraps(f)
    def command(*args, backend, kubeconfig, context, namespace, capture_image, capture_namespace, agents,
                curl_image=None, **kwargs):
        options = BackendOptions(backend=backend, kubeconfig=kubeconfig, context=context, namespace=namespace,
                                 capture_image=capture_image, capture_namespace=capture_namespace, agents=agents,
                                 curl_image=curl_image)
        return f(*args, backend=options, **kwargs)

    opts = [
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Where the pods run. Default, as kubectl would: kubernetes if --kubeconfig or "
                          "--context is given; else the lab if one is up; else kubernetes if $KUBECONFIG or "
                          "~/.kube/config names a cluster (or this runs in a pod); else lab."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubernetes: the kubeconfig file."),
        click.option("--context", help="Kubernetes: the kubeconfig context."),
        click.option("--namespace", "-n", help="Kubernetes: the namespace of SRC and DST, unless they name "
                                               "their own (NAMESPACE/POD)."),
        click.option("--capture-image", metavar="IMAGE", help="Kubernetes: the capture agent's image."),
        click.option("--capture-namespace", metavar="NS", help="Kubernetes: where the capture pods run."),
        click.option("--agents", type=click.Choice(AGENT_MODES), default="auto", show_default=True,
                     help="Which capture agents: auto the warm ones where they run (tracer agents install; the lab "
                          "keeps them from lab up), else ones started for this run (Kubernetes: capture pods); "
                          "warm only the warm ones (an error where none runs); cold always ones for this run."),
    ]
    if curl:
        opts.append(click.option(
            "--curl-image", metavar="IMAGE",
            help="Kubernetes: for a source pod without curl (distroless, scratch): run the request's curl from an "
                 "ephemeral container of IMAGE in that pod (kubectl debug's way; its packets leave the pod's own "
                 "eth0), e.g. curlimages/curl. The container stays in the pod's spec, stopped, until the pod goes."))
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), command)


def request_backend_options(f):
    """backend_options and --curl-image (follow, watch)."""
    return backend_options(f, curl=True)


point_option = click.option(
    "--point", "points", multiple=True, metavar="NODE/IFACE",
    help="Capture on this interface too (repeatable), e.g. a second NIC or a bond; on a way tracer does not "
         "know, the points between the pods' veths: every frame there is captured and the flow's are picked out.")
"""--point (follow, watch, path): the command gets `points`, a tuple of NODE/IFACE."""
