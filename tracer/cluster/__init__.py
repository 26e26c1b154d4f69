"""Cluster access: the ports every backend implements (ports), the one factory that picks and
builds a backend (backends), the lab and Kubernetes backends (lab/, k8s/), discovery of the way
(discover/: one module per data path), the capture agents' client (agents) and the kernel
filters they capture with (filters)."""
