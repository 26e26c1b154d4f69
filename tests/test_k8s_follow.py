"""`tracer follow --kubeconfig`: the real CLI through the Kubernetes code path, capture pods included.

Against the stand-in API server over the lab (tests/kmock_exec.py), `tracer follow` must show
the same hops as on the lab itself, and Ctrl-C at any phase must leave no capture pod and no
agent process. With $KUBECONFIG set, the `cluster` tests run the same against a real cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_tracer
from kmock_exec import CAPTURE_NAMESPACE, PODS, StandIn
from tracer.app.target import NFT_LIST
from tracer.app.watch import LIVE_MAX_SECONDS
from tracer.cluster.lab.kube_proxy import nft_ruleset
from tracer.cluster.lab import Lab

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def standin(lab: Lab) -> Iterator[StandIn]:
    with StandIn(lab) as s:
        yield s


def tracer_k8s(*args: str, kubeconfig: str, **kwargs: Any) -> subprocess.Popen:
    """The real CLI in a new process, pointed at a cluster only (no lab in its environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACER_")}
    return subprocess.Popen([sys.executable, "-m", "tracer", *args, "--kubeconfig", kubeconfig], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def hops(doc: dict) -> list[tuple]:
    """Per packet up to the first FIN (who closes first varies from run to run): its flags and,
    per hop, point, MACs, TTL and the tunnel (not the UDP source port: a hash of the flow)."""
    out = []
    for p in (p for f in doc["flows"] for p in f["packets"]):
        if "F" in p["tcp_flags"]:
            break
        out.append((p["tcp_flags"], [(h["point"], h["eth_src"], h["eth_dst"], h["ttl"],
                                      (h["encap"] or {}).get("vni"), (h["encap"] or {}).get("outer_eth_src"))
                                     for h in p["hops"]]))
    return out


def on_both(command: str, *, lab: Lab, standin: StandIn, dst: str = "httpbin") -> tuple[dict, dict]:
    """`tracer COMMAND curl DST -o json` through the stand-in API server, and on the lab itself."""
    proc = tracer_k8s(command, "curl", dst, "-o", "json", kubeconfig=str(standin.kubeconfig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    on_lab = run_tracer(command, "curl", dst, "-o", "json", store=lab.store, check=True).stdout
    return json.loads(out), json.loads(on_lab)


def k8s_text(*args: str, standin: StandIn) -> tuple[int, str, str]:
    """`tracer ARGS` (text) through the stand-in: exit code, stdout, stderr."""
    proc = tracer_k8s(*args, kubeconfig=str(standin.kubeconfig))
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.mark.root
@pytest.mark.slow
def test_follow_through_kubernetes_shows_the_lab_hops(lab: Lab, standin: StandIn) -> None:
    k8s, on_lab = on_both("follow", lab=lab, standin=standin)
    assert k8s["follow"]["backend"] == "kubernetes" and on_lab["follow"]["backend"] == "lab"
    assert k8s["follow"]["curl"][0]["status"] == 200
    assert [c["point"] for c in k8s["follow"]["captures"]] == [c["point"] for c in on_lab["follow"]["captures"]]
    assert hops(k8s) == hops(on_lab)
    assert [flags for flags, _ in hops(k8s)][:3] == ["S", "SA", "A"]
    assert all(len(points) == 6 for _, points in hops(k8s))  # every packet passed all six points
    # the agents ran in this run's capture pods, which are gone again
    snap = standin.snapshot()
    agents = [(ns, pod) for ns, pod, argv in snap["exec"] if argv[:2] == ("python3", "/agent.py")]
    assert {ns for ns, _ in agents} == {CAPTURE_NAMESPACE} and len({pod for _, pod in agents}) == 2
    assert standin.pods(CAPTURE_NAMESPACE) == []


@pytest.mark.root
@pytest.mark.slow
def test_path_through_kubernetes_is_the_labs_way_and_leaves_no_capture_pod(lab: Lab, standin: StandIn) -> None:
    k8s, on_lab = on_both("path", lab=lab, standin=standin)
    assert k8s["points"] == on_lab["points"] and len(k8s["points"]) == 6
    assert k8s["src"]["node"] == "worker1" and k8s["dst"]["node"] == "worker2"
    # the nodes were read through this run's capture pods, which are gone again
    snap = standin.snapshot()
    assert {ns for ns, _, argv in snap["exec"] if argv[0] == "ip"} >= {CAPTURE_NAMESPACE}
    assert standin.pods(CAPTURE_NAMESPACE) == []
    text = tracer_k8s("path", "curl", "httpbin", kubeconfig=str(standin.kubeconfig))
    out, err = text.communicate(timeout=60)
    assert text.returncode == 0, err
    assert "Step 4 on worker2" in out and "vxlan.calico" in out


# -- Services: svc/NAME, a URL by name, a ClusterIP, as on the lab ----------------------------------

def _dns_without_endpoints(doc: dict) -> dict:
    """A document's `dns` key, less the DNS Service's endpoint names: the lab names its pod
    `coredns`, Kubernetes `kube-system/coredns` (the namespace it is looked up in)."""
    dns = json.loads(json.dumps(doc["dns"]))
    dns["service"].pop("endpoints")
    return dns


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("dst", ["svc/httpbin", "http://httpbin/get"])
def test_follow_a_service_through_kubernetes_is_the_labs(lab: Lab, standin: StandIn, dst: str) -> None:
    k8s, on_lab = on_both("follow", lab=lab, standin=standin, dst=dst)
    follow = k8s["follow"]
    assert follow["backend"] == "kubernetes" and follow["curl"][0]["status"] == 200
    assert follow["service"] == on_lab["follow"]["service"]  # its port, endpoint and kube-proxy's rule
    assert follow["service"]["name"] == "httpbin" and follow["service"]["endpoints"] == ["httpbin"]
    assert follow["service"]["rule"].startswith("KUBE-SVC-") and lab.pod("httpbin").ip in follow["service"]["rule"]
    assert follow["url"] == on_lab["follow"]["url"]
    assert follow["dst"] == on_lab["follow"]["dst"]  # the endpoint pod, httpbin
    tcp = [next(f for f in doc["flows"] if f["protocol"] == "tcp") for doc in (k8s, on_lab)]
    assert tcp[0]["nat"] == tcp[1]["nat"] and tcp[0]["nat"]["kind"] == "dnat"  # kube-proxy's DNAT, seen
    assert hops(k8s) == hops(on_lab)
    if dst.startswith("http://"):  # by name: the pod's resolver asked kube-dns, whose pod is in kube-system
        proc = tracer_k8s("path", "curl", dst, "-o", "json", kubeconfig=str(standin.kubeconfig))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        path = json.loads(out)
        on_lab_path = json.loads(run_tracer("path", "curl", dst, "-o", "json", store=lab.store, check=True).stdout)
        assert _dns_without_endpoints(path) == _dns_without_endpoints(on_lab_path)
        assert path["dns"]["pod"] == "coredns" and path["dns"]["service"]["endpoints"] == ["kube-system/coredns"]
        # the DNS exchange was captured, DNATed from kube-dns to the pod as on the lab
        k8s_dns, lab_dns = ([(f["server"], f["nat"]) for f in doc["flows"] if f["protocol"] == "udp"]
                            for doc in (k8s, on_lab))
        assert k8s_dns == lab_dns and k8s_dns[0] == (f"{lab.pod('coredns').ip}:53", {
            "original": "10.152.183.10:53", "translated": f"{lab.pod('coredns').ip}:53", "kind": "dnat",
            "point": "worker1/vxlan.calico", "previous_point": f"worker1/{lab.pod('curl').host_veth}"})
        assert tcp[0]["dns_name"] == "httpbin.default.svc.cluster.local"
    assert standin.pods(CAPTURE_NAMESPACE) == []
    code, text, err = k8s_text("follow", "curl", dst, standin=standin)
    assert code == 0, err
    assert f"Service default/httpbin 10.152.183.50:80 -> endpoint httpbin {lab.pod('httpbin').ip}:80" in text
    assert f"kube-proxy on worker1: {follow['service']['rule']}" in text


@pytest.mark.root
@pytest.mark.slow
def test_path_of_a_cluster_ip_through_kubernetes_explains_the_dnat(lab: Lab, standin: StandIn) -> None:
    k8s, on_lab = on_both("path", lab=lab, standin=standin, dst="10.152.183.50")
    assert k8s["service"] == on_lab["service"] and k8s["service"]["rule"].startswith("KUBE-SVC-")
    assert k8s["points"] == on_lab["points"] and k8s["dst"]["name"] == "httpbin"
    code, text, err = k8s_text("path", "curl", "svc/httpbin", standin=standin)
    assert code == 0, err
    assert (f"addressed to Service default/httpbin 10.152.183.50:80: kube-proxy on worker1 DNATs it to its endpoint "
            f"{lab.pod('httpbin').ip}:80 as it comes in from the pod ({k8s['service']['rule']})") in text
    # kube-proxy's rule came from worker1's nat table, read in its capture pod
    reads = [argv for ns, _, argv in standin.snapshot()["exec"] if ns == CAPTURE_NAMESPACE]
    assert ("iptables-save", "-t", "nat") in reads
    assert standin.pods(CAPTURE_NAMESPACE) == []


@pytest.mark.root
@pytest.mark.slow
def test_follow_a_service_whose_rule_cannot_be_read_still_follows_and_says_so(lab: Lab, standin: StandIn) -> None:
    """The capture image has no iptables-save (or kube-proxy runs in nftables mode): the way and
    the packets' own NAT stand, the header says the rule was not read."""
    with standin.replying({("iptables-save", "-t", "nat"): None}):
        proc = tracer_k8s("follow", "curl", "svc/httpbin", "-o", "json", kubeconfig=str(standin.kubeconfig))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        code, text, err = k8s_text("follow", "curl", "svc/httpbin", standin=standin)
    doc = json.loads(out)
    assert doc["follow"]["curl"][0]["status"] == 200 and doc["follow"]["service"]["rule"] == ""
    flow = next(f for f in doc["flows"] if f["protocol"] == "tcp")
    assert flow["nat"]["kind"] == "dnat" and flow["nat"]["translated"] == f"{lab.pod('httpbin').ip}:80"
    assert code == 0, err
    assert "request 1: HTTP 200" in text
    assert ("kube-proxy's rule on worker1 not read (iptables-save -t nat, nft list table ip kube-proxy): "
            "the NAT below is the packets'") in text
    node_reads = [argv for ns, _, argv in standin.snapshot()["exec"] if ns == CAPTURE_NAMESPACE]
    assert ("iptables-save", "-t", "nat") in node_reads  # asked, and not there
    assert standin.pods(CAPTURE_NAMESPACE) == []


@pytest.mark.root
@pytest.mark.slow
def test_follow_a_service_on_a_node_in_nftables_mode_reads_the_rule_with_nft(lab: Lab, standin: StandIn) -> None:
    """kube-proxy in nftables mode: iptables-save shows no KUBE chains, `nft list table ip
    kube-proxy` (run in the capture pod) has the service-ips map and the chains; the rule is
    read from there. The listing is nft's own, of the lab's Services as kube-proxy writes them."""
    scratch = f"trt-nft-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    try:
        topo = dataclasses.replace(lab.topology, kube_proxy="nftables")
        subprocess.run(["ip", "netns", "exec", scratch, "nft", "-f", "-"], input=nft_ruleset(topo).encode(), check=True)
        listing = subprocess.run(["ip", "netns", "exec", scratch, *NFT_LIST], capture_output=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", scratch], check=True)
    empty = (0, b"# Generated by iptables-save\n*nat\nCOMMIT\n", b"")
    with standin.replying({("iptables-save", "-t", "nat"): empty, ("iptables-legacy-save", "-t", "nat"): empty,
                           NFT_LIST: (0, listing, b"")}):
        proc = tracer_k8s("follow", "curl", "svc/httpbin", "-o", "json", kubeconfig=str(standin.kubeconfig))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rule = json.loads(out)["follow"]["service"]["rule"]
    httpbin = lab.pod("httpbin")
    assert re.fullmatch(rf"service-[A-Z2-7]{{8}}-default/httpbin/tcp/http -> endpoint-[A-Z2-7]{{8}}-default/httpbin/tcp/"
                        rf"http__{re.escape(httpbin.ip)}/80: dnat to {re.escape(httpbin.ip)}:80", rule), rule
    assert rule.split(" -> ")[0].encode() in listing


@pytest.mark.root
@pytest.mark.parametrize("dst,code,says", [
    ("svc/nosuch", 4, "no Service 'nosuch' in namespace 'default'"),
    ("10.152.183.99", 4, "no Service in the cluster has ClusterIP 10.152.183.99"),
    ("http://httpbin:8080/get", 2, "Service default/httpbin has port 80, not 8080"),
])
def test_what_is_no_service_on_kubernetes_says_so(standin: StandIn, dst: str, code: int, says: str) -> None:
    got, _, err = k8s_text("follow", "curl", dst, standin=standin)
    assert got == code, err
    assert says in err and "Traceback" not in err
    assert standin.pods(CAPTURE_NAMESPACE) == []


@pytest.mark.root
@pytest.mark.slow
def test_watch_through_kubernetes_runs_its_agents_in_pods_that_outlast_them(standin: StandIn) -> None:
    """A watch runs for hours: a capture pod's short deadline (DEFAULT_DEADLINE, 15 min) would kill its agents."""
    before = len(standin.snapshot()["exec"])
    proc = tracer_k8s("watch", "curl", "httpbin", "--iterations", "1", kubeconfig=str(standin.kubeconfig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "request 1: HTTP 200" in out
    agent_pods = {pod for ns, pod, argv in standin.snapshot()["exec"][before:] if argv[:2] == ("python3", "/agent.py")}
    assert len(agent_pods) == 2
    handler = standin.handler
    assert handler is not None
    specs = standin.call(lambda: {name: obj.last.raw["spec"] for (res, ns, name), obj in handler.objects.items()
                                  if res == PODS and ns == CAPTURE_NAMESPACE and name in agent_pods})
    assert {name: spec["activeDeadlineSeconds"] >= LIVE_MAX_SECONDS for name, spec in specs.items()} == \
        dict.fromkeys(agent_pods, True)
    assert standin.pods(CAPTURE_NAMESPACE) == []


# -- a source pod without curl: --curl-image ---------------------------------------------------------

@pytest.mark.root
@pytest.mark.slow
def test_a_source_without_curl_follows_with_curl_from_an_ephemeral_container(lab: Lab, standin: StandIn) -> None:
    with standin.without("curl", "curl"):  # the curl pod's image, distroless as far as curl goes
        code, out, err = k8s_text("follow", "curl", "httpbin", standin=standin)
        assert code == 4 and "pod curl has no curl" in err and "--curl-image" in err, err
        before = len(standin.snapshot()["containers"])
        proc = tracer_k8s("follow", "curl", "httpbin", "--curl-image", "curlimages/curl", "-o", "json",
                          kubeconfig=str(standin.kubeconfig))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    on_lab = json.loads(run_tracer("follow", "curl", "httpbin", "-o", "json", store=lab.store, check=True).stdout)
    assert doc["follow"]["curl"][0]["status"] == 200
    assert hops(doc) == hops(on_lab)  # the request left the pod's own eth0, as its app's would
    curls = [(pod, container) for ns, pod, container, argv in standin.snapshot()["containers"][before:]
             if argv[:1] == ("curl",)]
    ((pod, container),) = curls
    assert pod == "curl" and container.startswith("tracer-curl-")
    (spec,) = [c for p in standin.pods("default") if p["metadata"]["name"] == "curl"
               for c in p["spec"]["ephemeralContainers"] if c["name"] == container]
    assert spec["image"] == "curlimages/curl" and spec["command"][0] == "sleep"
    assert spec["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert standin.pods(CAPTURE_NAMESPACE) == [] or all(
        p["metadata"]["name"].startswith("tracer-agent") for p in standin.pods(CAPTURE_NAMESPACE))


@pytest.mark.root
@pytest.mark.slow
def test_a_curl_image_that_cannot_be_pulled_says_so(standin: StandIn) -> None:
    code, out, err = k8s_text("follow", "curl", "httpbin", "--curl-image", "unpullable/curl", standin=standin)
    assert code == 6, err
    assert "the curl container in pod curl cannot get image unpullable/curl: ErrImagePull" in err
    assert "Traceback" not in err


def test_curl_image_is_for_kubernetes_only(lab: Lab) -> None:
    proc = run_tracer("follow", "curl", "httpbin", "--backend", "lab", "--curl-image", "curlimages/curl", store=lab.store)
    assert proc.returncode == 2 and "--curl-image apply to --backend kubernetes only" in proc.stderr


def _agent_started(snap: dict) -> bool:
    return any(argv[:2] == ("python3", "/agent.py") for _, _, argv in snap["exec"])


def _request_in_flight(snap: dict) -> bool:
    return any(argv[:1] == ("curl",) for _, _, argv in snap["exec"])


def _collecting(snap: dict) -> bool:
    return any(argv[:2] == ("python3", "/agent.py") and b"stop" in data for argv, data in snap["stdin"])


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("phase,reached", [
    ("agents starting", _agent_started),
    ("request in flight", _request_in_flight),
    ("collecting", _collecting),
])
def test_ctrl_c_at_each_phase_leaves_no_capture_pod_or_agent(standin: StandIn, phase: str,
                                                            reached: Callable[[dict], bool]) -> None:
    start = standin.snapshot()
    before = {k: len(v) for k, v in start.items()}  # only what this run does counts
    proc = tracer_k8s("follow", "curl", "httpbin", "--path", "/delay/2", "--timeout", "20",
                      kubeconfig=str(standin.kubeconfig))
    out, err = interrupt_when(proc, standin, before, reached, phase)
    finished = phase == "collecting" and proc.returncode == 0  # (as in test_follow: collecting is quick)
    if not finished:
        assert proc.returncode == 130, (phase, err)
        assert "interrupted" in err and "Traceback" not in err
    assert standin.pods(CAPTURE_NAMESPACE) == [], phase
    # What ran in the capture pods (agents, ip, cat) is gone with them; the curl in the app pod
    # is not tracer's to kill (its --max-time ends it), as with kubectl exec.
    spawned = standin.snapshot()["spawned"][before["spawned"]:]
    in_capture_pods = [(pid, argv) for pid, ns, _, argv in spawned if ns == CAPTURE_NAMESPACE]
    assert in_capture_pods and not [(pid, argv) for pid, argv in in_capture_pods if _alive(pid)], phase


def interrupt_when(proc: subprocess.Popen, standin: StandIn, before: dict[str, int],
                   reached: Callable[[dict], bool], phase: str) -> tuple[str, str]:
    """Ctrl-C to `proc` once what the stand-in saw since `before` has `reached` the phase; its output."""
    try:
        deadline = time.monotonic() + 30
        while not reached({k: v[before[k]:] for k, v in standin.snapshot().items()}):
            assert proc.poll() is None, f"ended before {phase}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"never reached {phase}"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- a real cluster ---------------------------------------------------------------------------------

needs_cluster = pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="no real cluster: $KUBECONFIG is not set")


@pytest.mark.cluster
@needs_cluster
def test_discover_on_a_real_cluster() -> None:
    """`discover` through the backend on the exercise's pods (manifests/exercise/pods.yaml applied)."""
    from tracer.cluster.discover import discover
    from tracer.cluster.k8s.backend import connect

    backend = connect(capture_image=os.environ.get("TRACER_CAPTURE_IMAGE"))
    try:
        way = discover(backend, "curl", "httpbin")
        assert way.points[0].role == "pod-veth" and way.points[-1].role == "pod-veth"
        if not way.same_node:
            assert [p.role for p in way.points[1:-1]] == ["tunnel", "underlay", "underlay", "tunnel"]
    finally:
        backend.close()


@pytest.mark.cluster
@needs_cluster
def test_follow_on_a_real_cluster() -> None:
    args = ["follow", "curl", "httpbin", "-o", "json"]
    if os.environ.get("TRACER_CAPTURE_IMAGE"):
        args += ["--capture-image", os.environ["TRACER_CAPTURE_IMAGE"]]
    proc = tracer_k8s(*args, kubeconfig=os.environ["KUBECONFIG"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["follow"]["backend"] == "kubernetes" and doc["follow"]["curl"][0]["status"] == 200
    syn = next(p for f in doc["flows"] for p in f["packets"] if p["tcp_flags"] == "S")
    assert [h["point"] for h in syn["hops"]][0] == doc["follow"]["captures"][0]["point"]
