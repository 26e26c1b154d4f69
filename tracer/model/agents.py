"""The warm capture agents as `tracer agents` shows them: frozen values (tracer.app.agents
builds them from the lab's state or the cluster's DaemonSet), for tracer.render.agents."""

from __future__ import annotations

from dataclasses import dataclass

AGENTS_SCHEMA = "tracer.agents/v1"


@dataclass(frozen=True, kw_only=True)
class NodeAgentView:
    """One node's warm agent."""

    node: str
    ready: bool
    where: str = ""
    """The lab: `pid N`; Kubernetes: the agent's pod. "" where the node has none."""
    state: str = ""
    """In words: running, or why not."""


@dataclass(frozen=True, kw_only=True)
class AgentsView:
    """What `tracer agents install|uninstall|status` did and found."""

    backend: str
    """lab or kubernetes."""
    action: str
    """installed, updated, unchanged (install); uninstalled, none (uninstall); status."""
    installed: bool
    """Whether warm agents are set up now (the lab keeps them; the DaemonSet exists and has pods)."""
    nodes: tuple[NodeAgentView, ...] = ()
    where: str = ""
    """The lab's prefix, or the capture namespace on Kubernetes."""
    image: str = ""
    """Kubernetes: the agents' image (install)."""
