"""NIC offloads in the lab: `--offloads none` (veth's defaults) or `real` (underlay NICs as real ones).

veth devices offer every segmentation offload and no GRO: with the defaults a TSO/GSO
super-frame leaves the sender's pod and crosses every point, the underlay included, whole
(32 kB "frames" on a 1,500-byte wire). `real` makes each node's eth1 behave as a real NIC
whose driver lacks the UDP tunnel segmentation offload, as most do:

- sending: eth1 offers no segmentation (tso, gso, tx-udp_tnl-segmentation, ... off), so the
  kernel cuts a super-frame into MTU-sized frames in software before eth1's capture tap sees it
  (`validate_xmit_skb` runs `skb_gso_segment` before `dev_queue_xmit_nit`, DATAPATHS.md §9): the
  pod's veth and the tunnel device show the super-frame, eth1 the wire's frames;
- the wire: the underlay's bridge ports offer none either, so only MTU-sized frames cross it,
  and the receiving veth takes them into its NAPI (veth hands a frame to GRO only when its
  sender could not have sent it merged: `veth_skb_is_eligible_for_gro`);
- receiving: GRO on at eth1 (on veth it needs NAPI, which `gro on` turns on): the frames of
  one flow are merged again before eth1's tap, into other sizes than the sender's (the VXLAN
  socket's GRO merges VXLAN-wrapped TCP before decapsulation; the vxlan device's own GRO
  cells merge what comes out of it).

Set with ethtool (Debian's package), read back the same way for `tracer lab status`.
"""

from __future__ import annotations

import shutil
import subprocess

from tracer.cluster.lab import netns
from tracer.cluster.lab.topology import Names, Topology
from tracer.errors import LabError

NONE, REAL = "none", "real"
MODES = (NONE, REAL)
NO_SEGMENTATION = ("tso", "off", "gso", "off", "tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off",
                   "tx-ipxip4-segmentation", "off", "tx-gre-segmentation", "off", "tx-gre-csum-segmentation", "off",
                   "tx-udp-segmentation", "off")
"""What a NIC without segmentation offloads offers: the kernel's GSO cuts before its tap."""
NIC = (*NO_SEGMENTATION, "gro", "on")
"""Each node's eth1 under `real`: no segmentation, GRO."""
SHOWN = ("tcp-segmentation-offload", "generic-segmentation-offload", "tx-udp_tnl-segmentation",
         "generic-receive-offload")
"""The `ethtool -k` features `lab status` shows of each node's underlay NIC."""


def require_ethtool(mode: str) -> None:
    """Refuse `real` before anything is built where ethtool is missing."""
    if mode == REAL and shutil.which("ethtool") is None:
        raise LabError("--offloads real needs ethtool", hint="apt-get install ethtool (./dev.sh installs it)")


def apply(topo: Topology, names: Names) -> None:
    """Set the underlay NICs and the wire's bridge ports as `topo.offloads` says (nothing for none)."""
    if topo.offloads != REAL:
        return
    for node in topo.nodes:
        _ethtool(names.netns(node.name), topo.underlay_nic, NIC)
        _ethtool(names.underlay, node.name, NO_SEGMENTATION)  # (the bridge port whose peer is the node's eth1)


def read(ns: str, device: str) -> dict[str, str]:
    """The SHOWN features of a device as `ethtool -k` prints them (`on`, `off`, `off [fixed]`);
    {} where ethtool is missing or fails."""
    if shutil.which("ethtool") is None:
        return {}
    r = subprocess.run(netns.exec_argv(ns, ["ethtool", "-k", device]), capture_output=True, text=True)
    if r.returncode != 0:
        return {}
    out = {}
    for line in r.stdout.splitlines():
        name, sep, value = line.strip().partition(": ")
        if sep and name in SHOWN:
            out[name] = value.strip()
    return out


def _ethtool(ns: str, device: str, settings: tuple[str, ...]) -> None:
    netns.run(netns.exec_argv(ns, ["ethtool", "-K", device, *settings]), what=f"ethtool -K {device} in {ns}")
