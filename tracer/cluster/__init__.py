"""Cluster access: the ports every backend implements, the lab and Kubernetes backends, discovery
of the way, the capture agents."""
