"""The header of a follow run: the request, curl's answers, what was captured, where it is kept.
(Its JSON counterpart, the document's `follow` key, is tracer.render.jsondoc.follow_document.)"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from tracer.model import Trace
from tracer.model.follow import CurlResult, FollowRun
from tracer.render.text import safe


def curl_text(c: CurlResult) -> str:
    took = f" in {c.time * 1000:.1f} ms" if c.time is not None else ""
    got = f", {c.bytes:,} bytes" if c.bytes is not None else ""
    if c.exit_code == 0 and c.status is not None:
        return f"HTTP {c.status}{took}{got}"
    return f"failed: {c.error}" + (f" (HTTP {c.status})" if c.status else "") + took


def follow_header(r: FollowRun, trace: Trace | None = None) -> Group:
    """`trace` (the run's analysis): tells the request's frames from the ARP the veths carried."""
    s, d = r.way.src.pod, r.way.dst.pod
    lines = [Text(f"follow {safe(s.name)} ({s.ip}, {safe(s.node)}) -> {safe(d.name)} ({d.ip}, {safe(d.node)}): "
                  f"GET {safe(r.url)}  [{r.backend}]", style="bold")]
    svc = r.way.service
    if svc is not None:
        if len(svc.endpoints) > 1:
            lines.append(Text(f"  Service {safe(svc.namespace)}/{safe(svc.name)} {svc.cluster_ip}:{svc.port} -> endpoints "
                              f"{', '.join(safe(e) for e in svc.endpoints)}: kube-proxy picks one per connection "
                              "(each flow below says which: its DNAT and its server)", style="bold"))
        else:
            lines.append(Text(f"  Service {safe(svc.namespace)}/{safe(svc.name)} {svc.cluster_ip}:{svc.port} -> endpoint "
                              f"{safe(d.name)} {d.ip}:{svc.target_port}", style="bold"))
        rule = (f"kube-proxy on {safe(s.node)}: {safe(svc.rule)}" if svc.rule else
                f"kube-proxy's rule on {safe(s.node)} not read (iptables-save -t nat, nft list table ip kube-proxy): "
                "the NAT below is the packets'")
        if svc.rule and len(svc.endpoints) > 1:
            nft = svc.rule.startswith("service-")
            rule = (f"kube-proxy on {safe(s.node)}: {safe(svc.rule.split(' -> ', 1)[0])} -> "
                    + ("an endpoint chain per endpoint, one taken by numgen random (nft list table ip kube-proxy)"
                       if nft else "a KUBE-SEP chain per endpoint, each taken with its --probability "
                       "(iptables-save -t nat)"))
        lines.append(Text(f"  {rule}", style="dim"))
    for i, c in enumerate(r.curls, 1):
        lines.append(Text(f"  request {i}: {curl_text(c)}", style="green" if c.ok else "red"))
    frames = sum(c.packets for c in r.captures)
    dropped = sum(c.dropped for c in r.captures)
    what = f"  captured {frames} frames at {len(r.captures)} points"
    if dropped:
        what += f", {dropped} dropped by the kernel (the agent could not keep up)"
    lines.append(Text(what, style="yellow" if dropped else "dim"))
    if not frames or trace is not None and all(f.protocol == "arp" for f in trace.flows):
        lines.append(Text(f"  nothing left {safe(s.name)}: no frame of the request at any point of the way",
                          style="red"))
    for w in r.way.warnings:  # (what discovery found bent in the way: the likely cause of a failure)
        lines.append(Text(f"  warning: {safe(w)}", style="yellow"))
    if r.way.same_node:
        lines.append(Text(f"  both pods run on {safe(s.node)}: no tunnel, the way is their two veths", style="yellow"))
    if r.save_error:
        lines.append(Text(f"  not saved: {safe(r.save_error)}", style="red", no_wrap=True))
    if r.interrupted:
        lines.append(Text("  interrupted (Ctrl-C): what follows is what was captured until then", style="yellow"))
    if r.saved:
        lines.append(Text(f"  saved to {safe(r.saved)} (tracer analyze {safe(r.saved)})", style="dim", no_wrap=True))
    lines.append(Text(""))
    return Group(*lines)
