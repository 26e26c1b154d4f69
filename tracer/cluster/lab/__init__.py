"""tracer's own cluster: the exercise's Calico VXLAN cluster in Linux network namespaces.

API for other commands (e.g. `follow`):

    lab = Lab.load()                       # NotFoundError "run: tracer lab up" when none
    pod = lab.pod("curl")                  # LabPod: name, node, ip, mac, netns, host_veth
    node = lab.node("worker1")             # LabNode: name, netns, underlay_ip/nic/mac, tunnel_*
    res = lab.exec("curl", ["curl", "-s", "http://172.18.104.14/get"])   # tracer.cluster.ports.ExecResult
    proc = lab.popen("worker1", ["tcpdump", "-U", "-w", "x.pcap", "-i", "eth1"])
    way = discover(lab.backend(), "curl", "httpbin")   # tracer.cluster.discover
"""

from tracer.cluster.lab.control import Lab, LabBackend, LabNode, LabPod, down, require_root, up
from tracer.cluster.lab.state import StateStore
from tracer.cluster.lab.topology import Names, NodeSpec, PodSpec, Topology, exercise

__all__ = [
    "Lab", "LabBackend", "LabNode", "LabPod", "Names", "NodeSpec", "PodSpec", "StateStore", "Topology", "down",
    "exercise", "require_root", "up",
]
