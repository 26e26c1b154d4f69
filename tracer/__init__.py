"""tracer: show the way of a packet through a Kubernetes cluster network."""

__version__ = "0.1.0"
