"""`tracer agents install|uninstall|status`: warm capture agents, on the lab or on a cluster.

The lab: one agent server per node in its namespace (tracer.cluster.lab.agents), which `lab up`
starts already; install/uninstall switch them on and off until `lab down`. Kubernetes: the
DaemonSet `tracer-agent` in the capture namespace (tracer.cluster.k8s.agents). The backend is
picked as for follow (tracer.cluster.backends.choose_backend).
"""

from __future__ import annotations

from collections.abc import Callable

from tracer.cluster.backends import BackendOptions, choose_backend
from tracer.model.agents import AgentsView, NodeAgentView

Progress = Callable[[str], None]


def install(options: BackendOptions, *, wait: bool = True, progress: Progress = lambda _: None) -> AgentsView:
    if choose_backend(options) == "lab":
        from tracer.cluster.lab import agents as lab_agents

        def turn_on(state, store):
            state.warm = True
            store.save(state)
            started = lab_agents.start(state, store, progress=progress)
            return "installed" if started else "unchanged"
        return _on_lab("agents install", turn_on)
    cluster, namespace, image = _cluster(options)
    from tracer.cluster.k8s import agents as k8s_agents

    try:
        done, found = k8s_agents.install(cluster, namespace=namespace, image=image, wait=wait, progress=progress)
    finally:
        cluster.close()
    return AgentsView(backend="kubernetes", action={"created": "installed"}.get(done, done), installed=True,
                      where=namespace, image=image, nodes=_k8s_nodes(found))


def uninstall(options: BackendOptions, *, wait: bool = True, progress: Progress = lambda _: None) -> AgentsView:
    if choose_backend(options) == "lab":
        from tracer.cluster.lab import agents as lab_agents

        def turn_off(state, store):
            had = state.warm or bool(lab_agents.running(state))
            state.warm = False
            lab_agents.stop(state, store)
            store.save(state)
            return "uninstalled" if had else "none"
        return _on_lab("agents uninstall", turn_off)
    cluster, namespace, _ = _cluster(options)
    from tracer.cluster.k8s import agents as k8s_agents

    try:
        found = k8s_agents.uninstall(cluster, namespace=namespace, wait=wait, progress=progress)
        left = k8s_agents.agents(cluster, namespace)
    finally:
        cluster.close()
    return AgentsView(backend="kubernetes", action="uninstalled" if found else "none", installed=False,
                      where=namespace, nodes=_k8s_nodes(left))


def status(options: BackendOptions) -> AgentsView:
    if choose_backend(options) == "lab":
        return _on_lab("agents status", lambda state, store: "status", change=False)
    cluster, namespace, _ = _cluster(options)
    from tracer.cluster.k8s import agents as k8s_agents

    try:
        found = k8s_agents.agents(cluster, namespace)
    finally:
        cluster.close()
    return AgentsView(backend="kubernetes", action="status", installed=any(a.pod for a in found), where=namespace,
                      nodes=_k8s_nodes(found))


def _on_lab(command: str, act, *, change: bool = True) -> AgentsView:
    from tracer.cluster.lab import Lab, require_root
    from tracer.cluster.lab import agents as lab_agents

    require_root(command)
    lab = Lab.load()
    store = lab.store
    with store.locked():
        state = store.load() or lab.state
        action = act(state, store)
    alive = lab_agents.running(state)
    nodes = tuple(NodeAgentView(node=n.name, ready=n.name in alive,
                                where=f"pid {alive[n.name].pid}" if n.name in alive else "",
                                state="running" if n.name in alive else
                                ("not running: the next follow starts it" if state.warm else "none"))
                  for n in lab.nodes)
    return AgentsView(backend="lab", action=action, installed=state.warm, where=state.prefix, nodes=nodes)


def _cluster(options: BackendOptions):
    from tracer.cluster.k8s.capture_pods import DEFAULT_IMAGE, DEFAULT_NAMESPACE
    from tracer.cluster.k8s.client import Cluster

    cluster = Cluster(kubeconfig=options.kubeconfig, context=options.context)
    return cluster, options.capture_namespace or DEFAULT_NAMESPACE, options.capture_image or DEFAULT_IMAGE


def _k8s_nodes(found) -> tuple[NodeAgentView, ...]:
    return tuple(NodeAgentView(node=a.node, ready=a.ready, where=a.pod, state=a.state) for a in found)
