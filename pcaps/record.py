"""Record the sample captures in pcaps/ from tracer's own lab (run as root).

    .venv/bin/python pcaps/record.py [SCENARIO...]

For each scenario: bring up a lab with its own prefix, apply the scenario's iptables rules,
start `tcpdump -U -w` on the six points of `tracer path curl httpbin` plus both pods' eth0
(or `-i any` on each node),
wait until each tcpdump listens, run curl once, let the tail of the exchange arrive, stop
every tcpdump with SIGINT (by PID) and tear the lab down. Writes
`pcaps/<scenario>/<node or pod>/<interface>.pcap`, `path.json` and `scenario.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tracer.app.target import dns_document, request_way
from tracer.cluster.discover import discover
from tracer.cluster.lab import Lab, StateStore, down, exercise, up

HERE = Path(__file__).resolve().parent
CLUSTER_IP = "10.152.183.50"


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    description: str
    url: str
    max_time: float = 5.0
    setup: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(pod or node, argv) run before capturing, e.g. iptables rules."""
    any_interface: bool = False
    """One `tcpdump -i any` per node of the way (<node>/any.pcap) instead of one per point."""
    linger: float = 0.3
    """Seconds between curl's end and stopping the tcpdumps (the exchange's last ACK/FIN)."""
    offloads: str = "none"
    """The lab's underlay NICs (`lab up --offloads`): real cuts and merges super-frames on the way."""
    request: tuple[str, ...] = ()
    """The command pod curl runs instead of curl (e.g. a UDP sender), if any."""
    by_name: bool = False
    """The URL names a Service: capture the DNS query's way too (to the DNS pod), as follow does,
    and write path.json as follow --save does (its `dns` key)."""


SCENARIOS = (
    Scenario(
        name="http-get",
        description="curl -> httpbin GET /get across the VXLAN tunnel, answered with HTTP 200.",
        url="http://172.18.104.14:80/get",
    ),
    Scenario(
        name="any-http-get",
        description=(
            "The same request captured as people capture on a node: one `tcpdump -i any` per node "
            "(Linux cooked v2, each frame with its interface index), <node>/any.pcap."
        ),
        url="http://172.18.104.14:80/get",
        any_interface=True,
        # libpcap 1.10.3's immediate mode loses frames on `any` (17 to 35 of 36 here); without it
        # the ring hands them over within its block timeout, so wait longer before stopping.
        linger=1.5,
    ),
    Scenario(
        name="bytes-offloads",
        description=(
            "curl -> httpbin GET /bytes/50000 on a lab whose underlay NICs behave as real ones (lab up "
            "--offloads real): TSO super-frames at the pods' eth0 and veths and at the tunnel devices, "
            "the wire's MTU-sized frames at worker2/eth1 (the kernel's GSO cuts before its tap), GRO's "
            "merges at worker1/eth1; every byte at every point."
        ),
        url="http://172.18.104.14:80/bytes/50000",
        offloads="real",
    ),
    Scenario(
        name="vxlan-fragments",
        description=(
            "Both nodes' eth1 at MTU 1400 under vxlan.calico's 1450 (an underlay MTU lowered after the CNI "
            "chose its own): curl's pod sends two 1,400-byte UDP datagrams without DF to httpbin:9999; "
            "each VXLAN packet (1,478 bytes) leaves worker1/eth1 in 2 IP fragments (the outer DF is not "
            "set), worker2 puts them together before decapsulating; httpbin answers ICMP port unreachable."
        ),
        url="",
        setup=(("worker1", ("ip", "link", "set", "eth1", "mtu", "1400")),
               ("worker2", ("ip", "link", "set", "eth1", "mtu", "1400"))),
        request=("python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 "s.setsockopt(socket.IPPROTO_IP, 10, 0); "  # (IP_MTU_DISCOVER = IP_PMTUDISC_DONT: no DF)
                 "[s.sendto(bytes(1400), ('172.18.104.14', 9999)) for _ in range(2)]"),
    ),
    Scenario(
        name="dns-service",
        description=(
            "curl -> http://httpbin/get by name: curl's resolver asks kube-dns 10.152.183.10 (dnsmasq in pod "
            "kube-system/coredns on worker2), kube-proxy on worker1 DNATs the query to 172.18.104.62 across the "
            "tunnel and the answer back; then the HTTP request to Service httpbin 10.152.183.50, DNAT-ed to "
            "172.18.104.14. Captured also on coredns's veth (worker2) and its eth0; path.json has the DNS way."
        ),
        url="http://httpbin/get",
        by_name=True,
    ),
    Scenario(
        name="vxlan-drop",
        description=(
            "worker2 drops incoming VXLAN (iptables INPUT udp dport 4789 DROP): the SYN and its "
            "retransmissions reach worker2/eth1 and no point after it; curl gives up after 2 s."
        ),
        url="http://172.18.104.14:80/get",
        max_time=2.0,
        setup=(("worker2", ("iptables", "-A", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP")),),
    ),
    Scenario(
        name="policy-drop",
        description=(
            "An egress policy of pod curl as Calico enforces it, on curl's node (iptables FORWARD "
            "DROP of TCP to port 80 coming in from curl's host veth): the SYN and its retransmission "
            "reach worker1/cali35e3a5cb80b and no point after it; curl gives up after 2 s."
        ),
        url="http://172.18.104.14:80/get",
        max_time=2.0,
        setup=(("worker1", ("iptables", "-A", "FORWARD", "-i", "cali35e3a5cb80b", "-p", "tcp", "--dport", "80",
                            "-j", "DROP")),),
    ),
    Scenario(
        name="clusterip-dnat",
        description=(
            f"curl -> ClusterIP {CLUSTER_IP}:80, DNAT-ed by a kube-proxy-like rule on worker1 to "
            "172.18.104.14:80 between points 1 and 2 (destination IP and checksums change there)."
        ),
        url=f"http://{CLUSTER_IP}:80/get",
        setup=(
            ("worker1", ("iptables", "-t", "nat", "-N", "KUBE-SERVICES")),
            ("worker1", ("iptables", "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")),
            ("worker1", ("iptables", "-t", "nat", "-A", "KUBE-SERVICES", "-d", f"{CLUSTER_IP}/32", "-p", "tcp",
                         "--dport", "80", "-m", "comment", "--comment", "default/httpbin:http cluster IP",
                         "-j", "DNAT", "--to-destination", "172.18.104.14:80")),
        ),
    ),
)


def record(scenario: Scenario, out_root: Path) -> dict:
    store = StateStore(prefix=f"trrec{os.getpid()}-", directory=Path(tempfile.mkdtemp(prefix="tracer-record-")))
    out = out_root / scenario.name
    shutil.rmtree(out, ignore_errors=True)
    lab = up(dataclasses.replace(exercise(), offloads=scenario.offloads), store=store)
    try:
        for target, argv in scenario.setup:
            res = lab.exec(target, argv)
            if res.returncode != 0:
                raise SystemExit(f"{target}: {' '.join(argv)} failed: {res.stderr.decode()}")
        way = discover(lab.backend(), "curl", "httpbin")
        doc = way.to_dict()
        if scenario.by_name:
            to = request_way(lab.backend(), "curl", scenario.url, 80, "/")
            way = to.way
            doc = {**way.to_dict(), **({"dns": dns_document(to.dns)} if to.dns else {})}
        if scenario.any_interface:
            points = [(node, "any") for node in dict.fromkeys(p.node for p in way.points)]
        else:
            points = [(p.node, p.interface) for p in way.points] + [("curl", "eth0"), ("httpbin", "eth0")]
            for d in to.dns.ways if scenario.by_name and to.dns else ():
                points += [(p.node, p.interface) for p in d.points if (p.node, p.interface) not in points]
                points.append((d.dst.pod.name, "eth0"))
        captures = [_start_tcpdump(lab, where, dev, out / where / f"{dev}.pcap", immediate=not scenario.any_interface)
                    for where, dev in points]
        curl_argv = list(scenario.request) or ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                                               str(scenario.max_time), scenario.url]
        res = lab.exec("curl", curl_argv, timeout=scenario.max_time + 5)
        time.sleep(scenario.linger)  # the last ACK/FIN of the exchange, then stop
        stats = {f"{where}/{dev}": _stop_tcpdump(proc) for (where, dev), proc in zip(points, captures)}
        (out / "path.json").write_text(json.dumps(doc, indent=2) + "\n")
        meta = {
            "scenario": scenario.name,
            "description": scenario.description,
            "setup": [{"in": t, "argv": list(a)} for t, a in scenario.setup],
            "offloads": scenario.offloads,
            "request": {"in": "curl", "argv": curl_argv, "exit_code": res.returncode,
                        "http_code": res.stdout.decode().strip()},
            "captures": stats,
        }
        (out / "scenario.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta
    finally:
        down(store)
        shutil.rmtree(store.directory, ignore_errors=True)


def _start_tcpdump(lab: Lab, where: str, dev: str, path: Path, immediate: bool = True) -> subprocess.Popen:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Immediate mode: libpcap hands over each packet at once instead of holding a ring block
    # for up to 1 s (stopping then would lose it); -U: write it out at once; -Z root: keep
    # the right to write here.
    mode = ["--immediate-mode"] if immediate else []
    proc = lab.popen(where, ["tcpdump", *mode, "-U", "-n", "-Z", "root", "-s", "0", "-i", dev, "-w", str(path)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    seen = b""
    while b"listening on" not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"tcpdump on {where}/{dev} did not start: {seen.decode(errors='replace')}")
        if select.select([proc.stderr], [], [], 0.1)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    return proc


def _stop_tcpdump(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=5)
    return next((l for l in err.decode().splitlines() if "captured" in l), "").strip()


def main(argv: list[str]) -> None:
    if os.geteuid() != 0:
        raise SystemExit("record.py needs root (network namespaces, tcpdump)")
    wanted = argv or [s.name for s in SCENARIOS]
    for scenario in (s for s in SCENARIOS if s.name in wanted):
        meta = record(scenario, HERE)
        print(f"{scenario.name}: curl exit {meta['request']['exit_code']}, HTTP {meta['request']['http_code'] or '-'}")
        for point, stat in meta["captures"].items():
            print(f"  {point:28} {stat}")


if __name__ == "__main__":
    main(sys.argv[1:])
