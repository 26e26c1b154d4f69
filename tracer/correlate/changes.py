"""What a hop shows: the one definition of what changed at a hop, and a packet in words.

Shared by every view that shows hops: tracer.correlate.describe (analyze, follow and their JSON)
and the live grid (tracer.app.watch), so that "what changed" means the same in all of them.
"""

from __future__ import annotations

import struct

from tracer.capture.sightings import CALICO_MAC, HTTP_STARTS
from tracer.decode import (
    ARP_REPLY, ARP_REQUEST, PROTO_ARP, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_TCP, PROTO_UDP, Frame,
    fmt_ip, fmt_mac, tcp_flags_str,
)
from tracer.decode import dns as dns_decode
from tracer.model import Arp, Dns, Encapsulation

ICMP_UNREACHABLE = {0: "network unreachable", 1: "host unreachable", 3: "port unreachable",
                    4: "fragmentation needed", 13: "administratively prohibited"}
"""Words for ICMP destination-unreachable codes (RFC 792, 1812); code 4 carries the next hop's
MTU in the bytes an echo's sequence number takes (RFC 1191)."""
PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmpv6", PROTO_GRE: "gre",
               PROTO_IPIP: "ipip", PROTO_ARP: "arp"}
ARP_OPS = {ARP_REQUEST: "request", ARP_REPLY: "reply"}
FLAG_WORDS = {"S": "SYN", "SA": "SYN-ACK", "A": "ACK", "PA": "PSH-ACK", "FA": "FIN-ACK", "R": "RST", "RA": "RST-ACK",
              "FPA": "FIN-PSH-ACK"}
TUNNEL_NAMES = {"vxlan": "VXLAN", "geneve": "Geneve", "ipip": "IP-in-IP", "gre": "GRE", "erspan": "ERSPAN"}


def endpoint(ep: tuple) -> str:
    ip, port = ep
    s = fmt_ip(ip) or "?"
    if port is None:
        return s
    return f"[{s}]:{port}" if ":" in s else f"{s}:{port}"


def frame_ends(fr: Frame) -> tuple[tuple, tuple]:
    """The frame's (source IP, port) and (destination IP, port); ARP's sender and target IP."""
    if fr.arp is not None:
        return (fr.arp[2], None), (fr.arp[4], None)
    return (fr.ip_src, fr.sport), (fr.ip_dst, fr.dport)


def arp_fields(fr: Frame) -> Arp | None:
    if fr.arp is None:
        return None
    op, smac, sip, tmac, tip = fr.arp
    return Arp(op=ARP_OPS.get(op, f"op {op}"), sender_mac=fmt_mac(smac), sender_ip=fmt_ip(sip),
               target_mac=fmt_mac(tmac), target_ip=fmt_ip(tip))


def _arp_words(fr: Frame, short: bool) -> str:
    """tcpdump's words: `who-has 169.254.1.1 tell 10.1.38.203`, `169.254.1.1 is-at ee:ee:…`."""
    op, smac, sip, _, tip = fr.arp
    if op == ARP_REQUEST:
        return f"who-has {fmt_ip(tip)}" + ("" if short else f" tell {fmt_ip(sip)}")
    if op == ARP_REPLY:
        return f"is-at {fmt_mac(smac)}" if short else f"{fmt_ip(sip)} is-at {fmt_mac(smac)}"
    return f"ARP op {op}"


_READ = object()
"""(the DNS message of a frame, not read yet: `packet_summary` and friends read it themselves)"""


def packet_summary(fr: Frame, dns: dns_decode.DnsMessage | None | object = _READ) -> str:
    """`SYN 10.1.38.203:56312 -> 10.1.201.77:80`, `GET /get`, `ICMP echo 7`: one packet in words
    (`dns`: its `dns_message`, where the caller has read it already)."""
    if fr.arp is not None:
        return "ARP " + _arp_words(fr, short=False)
    src, dst = endpoint((fr.ip_src, fr.sport)), endpoint((fr.ip_dst, fr.dport))
    if fr.proto == PROTO_TCP:
        flags = tcp_flags_str(fr.tcp_flags)
        text = f"{FLAG_WORDS.get(flags, flags)} {src} -> {dst}"
        if fr.payload_len:
            line = fr.data[fr.payload_offset:fr.payload_offset + 64].split(b"\r\n", 1)[0] if fr.payload_offset >= 0 else b""
            if line.startswith(HTTP_STARTS):
                text += " " + line.decode("ascii", "replace")
            else:
                text += f" {fr.payload_len} bytes"
        return text
    if fr.proto in (PROTO_ICMP, PROTO_ICMPV6):
        if fr.proto == PROTO_ICMP and fr.icmp_type == 3:  # (its words, and frag-needed's next-hop MTU)
            kind = ICMP_UNREACHABLE.get(fr.icmp_code, f"destination unreachable (code {fr.icmp_code})")
            mtu = next_hop_mtu(fr)
            if mtu:
                kind += f", next-hop MTU {mtu}"
            return f"ICMP {kind} {src} -> {dst}"
        kind = {0: "echo reply", 8: "echo request", 128: "echo request", 129: "echo reply"}.get(fr.icmp_type, f"type {fr.icmp_type}")
        seq = f" seq {fr.icmp_seq}" if fr.icmp_seq is not None else ""
        return f"ICMP {kind}{seq} {src} -> {dst}"
    msg = dns_message(fr) if dns is _READ else dns
    if isinstance(msg, dns_decode.DnsMessage):
        return f"{msg.words()} {src} -> {dst}"
    name = PROTO_NAMES.get(fr.proto, f"proto {fr.proto}").upper()
    return f"{name} {src} -> {dst} {fr.payload_len or 0} bytes"


def next_hop_mtu(fr: Frame) -> int | None:
    """The next hop's MTU an ICMP "fragmentation needed" names (RFC 1191), else None."""
    off = fr.l4_offset
    if fr.proto != PROTO_ICMP or fr.icmp_type != 3 or fr.icmp_code != 4 or off is None or off < 0 \
            or len(fr.data) < off + 8:
        return None
    return int.from_bytes(fr.data[off + 6:off + 8], "big") or None


def icmp_quote(fr: Frame) -> tuple[bytes, bytes, int, int, int] | None:
    """What an ICMP error quotes of the TCP packet it answers (its header and the first 8 bytes
    of TCP, RFC 792): (source IP, destination IP, ports, sequence number), else None."""
    off = fr.payload_offset
    if fr.proto != PROTO_ICMP or fr.icmp_type not in (3, 11) or off is None or off < 0:
        return None
    d = fr.data
    if len(d) < off + 20 or d[off] >> 4 != 4 or d[off + 9] != PROTO_TCP:
        return None
    ihl = (d[off] & 0x0F) * 4
    if len(d) < off + ihl + 8:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", d, off + ihl)
    return d[off + 12:off + 16], d[off + 16:off + 20], sport, dport, seq


def dns_message(fr: Frame) -> dns_decode.DnsMessage | None:
    """The DNS message a UDP packet to or from port 53 (or mDNS's 5353) carries, else None."""
    if fr.proto != PROTO_UDP or fr.payload_offset < 0 or not fr.payload_len or not (
            fr.sport in dns_decode.DNS_PORTS or fr.dport in dns_decode.DNS_PORTS):
        return None
    return dns_decode.parse(bytes(fr.data[fr.payload_offset:fr.payload_offset + fr.payload_len]))


def dns_of(msg: dns_decode.DnsMessage | None) -> Dns | None:
    """The model's DNS fields of a packet's `dns_message` (query name and type, answers, rcode)."""
    if msg is None:
        return None
    return Dns(id=msg.id, response=msg.response, name=msg.name, type=msg.type, rcode=msg.rcode_name,
               answers=msg.answers, truncated=msg.truncated)


def packet_label(fr: Frame, dns: dns_decode.DnsMessage | None | object = _READ) -> str:
    """`SYN`, `PSH-ACK GET /get`, `PSH-ACK HTTP/1.1 200`: short enough for a projector."""
    if fr.arp is not None:
        return _arp_words(fr, short=True)
    msg = dns_message(fr) if dns is _READ else dns
    if isinstance(msg, dns_decode.DnsMessage):
        return msg.words(short=True)
    if fr.proto == PROTO_ICMP and fr.icmp_type == 3:
        mtu = next_hop_mtu(fr)
        return "ICMP frag needed" + (f" (MTU {mtu})" if mtu else "") if fr.icmp_code == 4 else \
            "ICMP " + ICMP_UNREACHABLE.get(fr.icmp_code, "unreachable")
    flags = tcp_flags_str(fr.tcp_flags)
    text = FLAG_WORDS.get(flags, flags or PROTO_NAMES.get(fr.proto, "?").upper())
    if fr.payload_len:
        line = fr.data[fr.payload_offset:fr.payload_offset + 40].split(b"\r\n", 1)[0] if fr.payload_offset >= 0 else b""
        if line.startswith(HTTP_STARTS):
            text += " " + " ".join(line.decode("ascii", "replace").split()[:2])
        else:
            text += f" {fr.payload_len}B"
    return text


def encapsulation(fr: Frame) -> Encapsulation | None:
    """The tunnel right around the inner packet at a hop, as the model has it (None: none)."""
    if not fr.tunnels:
        return None
    t = fr.tunnels[-1]  # the tunnel right around the inner packet
    return Encapsulation(type=t.type, vni=t.vni, outer_eth_src=fmt_mac(t.outer_eth_src),
                         outer_eth_dst=fmt_mac(t.outer_eth_dst), outer_ip_src=fmt_ip(t.outer_ip_src),
                         outer_ip_dst=fmt_ip(t.outer_ip_dst), udp_sport=t.udp_sport, udp_dport=t.udp_dport,
                         bytes_added=sum(x.bytes_added for x in fr.tunnels), outer_ttl=t.outer_ttl)


def hop_changes(prev: Frame, fr: Frame) -> tuple[str, ...]:
    """What changed at a hop against the packet's previous one: the one definition that every
    view uses (analyze's hops and JSON, follow, the live grid). In this order: `dnat`, `snat`
    (destination, source address or port), `ttl` (routed: one less), `mac` (the frame's MACs
    rewritten), `encap` or `decap` (a tunnel put around or taken off the packet)."""
    changes = []
    if (prev.ip_dst, prev.dport) != (fr.ip_dst, fr.dport):
        changes.append("dnat")
    if (prev.ip_src, prev.sport) != (fr.ip_src, fr.sport):
        changes.append("snat")
    if prev.ttl is not None and fr.ttl is not None and fr.ttl < prev.ttl:
        changes.append("ttl")
    # (Linux cooked captures know only the sender's MAC: what is not known did not change)
    if any(a != b and a is not None and b is not None for a, b in ((prev.eth_src, fr.eth_src), (prev.eth_dst, fr.eth_dst))):
        changes.append("mac")
    if fr.tunnels and not prev.tunnels:
        changes.append("encap")
    elif prev.tunnels and not fr.tunnels:
        changes.append("decap")
    return tuple(changes)


INITIAL_TTLS = (64, 128, 255)
"""What senders start a packet's TTL (hop limit) at: Linux and most others 64, Windows 128."""


def first_seen(fr: Frame, point) -> str:
    """The first hop of a packet in the captures: as its pod sent it only where a pod's veth saw
    it with an initial TTL; else what its TTL tells of the way before. ARP: what it asks or
    answers, and who answers when it is Calico's proxy-ARP."""
    if fr.arp is not None:
        return _arp_why(fr)
    ttl = fr.ttl
    if ttl is None or ttl in INITIAL_TTLS:
        return "as the pod sent it" if point.role == "pod-veth" else "first seen here"
    routed = min(t for t in INITIAL_TTLS if t > ttl) - ttl
    times = {1: "once", 2: "twice"}.get(routed, f"{routed} times")
    return f"first seen here; TTL {ttl}: routed {times} before"


def _arp_why(fr: Frame) -> str:
    op, smac, sip, tmac, tip = fr.arp
    if op == ARP_REQUEST:
        asker = "the host end of the veth" if smac == CALICO_MAC else fmt_mac(smac)
        how = "broadcast" if fr.eth_dst in (None, b"\xff" * 6) else f"unicast to {fmt_mac(fr.eth_dst)} (checking an entry it has)"
        return f"ARP request: who has {fmt_ip(tip)}? tell {fmt_ip(sip)} ({asker}); {how}"
    if op == ARP_REPLY:
        if smac == CALICO_MAC:
            return (f"ARP reply: {fmt_ip(sip)} is at {fmt_mac(smac)}: proxy-ARP, the host end of the veth answers "
                    f"for every address with its own MAC (Calico)")
        return f"ARP reply: {fmt_ip(sip)} is at {fmt_mac(smac)} (to {fmt_ip(tip)} at {fmt_mac(tmac)})"
    return f"ARP operation {op} from {fmt_ip(sip)} ({fmt_mac(smac)})"


def hop_why(changes: tuple[str, ...], prev: Frame | None, prev_point, fr: Frame, point, enc: Encapsulation | None,
            direction: str) -> str:
    """The hop's changes in one sentence (why they happened: routing, VXLAN, kube-proxy, ...)."""
    if prev is None:
        return first_seen(fr, point)
    words: list[str] = []
    if "dnat" in changes:
        what = f"destination {endpoint((prev.ip_dst, prev.dport))} -> {endpoint((fr.ip_dst, fr.dport))}"
        words.append(f"DNAT (kube-proxy): {what}" if direction == "request" else f"NAT: {what}")
    if "snat" in changes:
        what = f"source {endpoint((prev.ip_src, prev.sport))} -> {endpoint((fr.ip_src, fr.sport))}"
        words.append(f"SNAT: {what}" if direction == "request" else f"conntrack restores the service address: {what}")
    routed, mac = "ttl" in changes, "mac" in changes
    if routed or mac:
        parts = []
        if mac:
            parts.append("MACs rewritten")
        if routed:
            parts.append(f"TTL {prev.ttl} -> {fr.ttl}")
        who = f"{point.node} routed it" if routed else f"{point.node} rewrote the frame"
        words.append(f"{who}: " + ", ".join(parts))
    if "encap" in changes:
        t = fr.tunnels[-1]
        name = TUNNEL_NAMES.get(t.type, t.type)
        vni = f" VNI {t.vni}" if t.vni is not None else ""
        port = f", UDP {t.udp_sport} -> {t.udp_dport}" if t.udp_dport is not None else ""
        # (seen first encapsulated on another node than the point before: it was encapsulated
        # there, on the way out, at a point that did not capture it)
        where = "" if prev_point.node == point.node else f" on {prev_point.node} (first seen so here)"
        words.append(f"{name} encapsulated{where}{vni}{port}, outer {fmt_ip(t.outer_ip_src)} -> "
                     f"{fmt_ip(t.outer_ip_dst)}, +{enc.bytes_added} bytes")
    elif "decap" in changes:
        t = prev.tunnels[-1]
        at = f"({point.interface})" if point.role in ("tunnel", "unknown") else "(first seen so here)"
        words.append(f"{TUNNEL_NAMES.get(t.type, t.type)} decapsulated on {point.node} {at}")
    elif fr.tunnels and prev.tunnels and prev_point.node != point.node:
        words.append(f"crossed the underlay from {prev_point.node} to {point.node}")
    if not words:
        if prev_point.node == point.node and {prev_point.role, point.role} == {"pod-veth", "bridge"}:
            bridge, port = (point, prev_point) if point.role == "bridge" else (prev_point, point)
            words.append(f"the bridge {bridge.interface} took it in from its port {port.interface}, unchanged"
                         if point.role == "bridge" else f"the bridge {bridge.interface} switched it out of its port "
                         f"{port.interface}, unchanged")
        elif prev_point.node != point.node and prev_point.role == point.role == "pod-veth":
            words.append(f"crossed the veth pair from {prev_point.node} to {point.node} unchanged")
        elif prev_point.node != point.node:
            words.append(f"reached {point.node} unchanged")
        else:
            words.append("unchanged")
    return "; ".join(words)


def drop_hint(last, nxt) -> str:
    """What to look at for a packet last seen at point `last` and not at `nxt`, the next on its
    way (both correlation's points: node, interface, role); "" when the roles tell nothing."""
    a, b = last.role, nxt.role
    if last.node != nxt.node:
        if a == b == "underlay":
            return (f"it left {last.node} on {last.interface} but did not reach {nxt.node}'s {nxt.interface}: look at "
                    f"the underlay between them (routes, a firewall; the MTU: VXLAN adds 50 bytes)")
        return ""
    node = last.node
    if a == "underlay" and b == "tunnel":
        return (f"{node} took it in on {last.interface} but {nxt.interface} never had it: look for a rule dropping "
                f"the tunnel's UDP port on {node} (iptables -L INPUT), a VNI or port that differs between the nodes "
                f"(ip -d link show {nxt.interface}), or an outer destination that is not {node}'s")
    if a == "pod-veth" and b in ("tunnel", "bridge", "underlay"):
        return (f"{node} got it from the pod on {last.interface} but did not send it on: look for a policy drop "
                f"(iptables -L FORWARD, Calico's cali-* chains), the route to the destination (ip route get), "
                f"or rp_filter")
    if a == "tunnel" and b == "underlay":
        return (f"{node} encapsulated it on {last.interface} but did not send it out of {nxt.interface}: look at the "
                f"tunnel's neighbour and FDB entries (bridge fdb show dev {last.interface}) and the route to the "
                f"other node")
    if a in ("tunnel", "bridge", "underlay") and b == "pod-veth":
        return (f"{node} had it on {last.interface} but did not hand it to the pod's {nxt.interface}: look for a "
                f"policy drop on the way in (Calico's cali-tw-* chains) or the route to the pod")
    return ""
