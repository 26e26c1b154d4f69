"""The capture image (capture-pod/), built and run as a capture pod runs it, with a lab request
captured through it by tracer's own agent client.

No container registry is reachable here (Debian's mirror and PyPI are), so the base is a Debian
bookworm made by mmdebstrap, imported into podman; capture-pod/build.sh builds the image on it
with podman, saves it as a docker-archive and loads it with `--load microk8s`, which runs
`microk8s ctr image import -`: here a stand-in `microk8s` that is `ctr` on the test's own
containerd (microk8s' is `ctr` on the snap's containerd, namespace k8s.io). Each lab node then
gets a container as tracer's capture pod manifest asks for one (tracer.cluster.k8s.capture_pods):
the node's network namespace as its host network, every capability dropped but NET_RAW and
NET_ADMIN, no new privileges, and the runtime's default seccomp profile; `sleep infinity`, into
which the agent is exec'd as tracer.cluster.k8s.backend execs it (`ctr task exec`, stdin
attached, standing in for the kubelet's exec stream).

The built archive is cached under ~/.cache/tracer-test/capture-image/, keyed by what goes into
it (Dockerfile, agent.py, build.sh, this file's base recipe): a second run imports it and builds
nothing. Everything the test starts has the prefix `tracer-test-` and is removed afterwards, also
when it fails: the containers, containerd (by PID) and its shims, its root, state and cgroups,
the podman images (by name) and podman's private storage, the temporary directories, the lab.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer.capture.pcapio import open_capture
from tracer.cluster.agents import AgentClient, agent_argv
from tracer.app.target import NFT_LIST, request_way
from tracer.cluster.discover import discover
from tracer.cluster.filters import capture_plan
from tracer.cluster.k8s.backend import AGENT
from tracer.cluster.k8s import agents as k8s_agents
from tracer.cluster.k8s.capture_pods import manifest
from tracer.cluster.lab import Lab
from tracer.cluster.lab.kube_proxy import nft_ruleset
from tracer.cluster.lab.backend import LabAgentChannel
from tracer.cluster.lab.netns import NETNS_DIR
from tracer.cluster.lab.state import process_start_time
from tracer.cluster.ports import ExecResult
from tracer.decode.formatting import fmt_ip
from tracer.decode.frame import decode

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CAPTURE_POD = ROOT / "capture-pod"
PREFIX = "tracer-test-"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tracer-test" / "capture-image"
TOOLS = ("mmdebstrap", "podman", "containerd", "ctr", "runc")
PCAP_NANO_MAGIC = b"\x4d\x3c\xb2\xa1"
TCP_SYN, TCP_ACK = 0x02, 0x10
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13

# The test's base: Debian bookworm with python3 and pip, made as Debian's own images are (no docs,
# man pages or locales; no apt caches left in a layer) so that the image stays small and quick to
# save and import. It also carries this machine's CA bundle: outbound TLS here is re-signed by a
# local CA, which pip in the build must trust (a user's build needs nothing of the kind, so the
# project's Dockerfile does not do it). usr-is-merged + the merged-usr hook: mmdebstrap would
# otherwise pull in usrmerge and with it perl (~30 MB).
MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MMDEBSTRAP = (
    "--variant=minbase", "--include=python3,python3-pip,ca-certificates,usr-is-merged",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
    '--aptopt=Dir::Cache::pkgcache ""', '--aptopt=Dir::Cache::srcpkgcache ""',
    f"--customize-hook=upload {CA_BUNDLE} {CA_BUNDLE}",
)
BASE_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
BUILD_TIMEOUT = 300
BLOB_INFO_CACHE = (Path("/var/lib/containers"), Path("/var/lib/containers/cache"),
                   Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb"))
"""Where podman as root keeps what it knows of blobs (containers/image), whatever its storage."""

# Every capability there is (linux/capability.h, 0..40): "drop ALL" as ctr spells it, one by one.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)


# --- leftovers: a test process killed outright leaves its directories with a state file ----------

@dataclass
class Proc:
    """A process by PID and start time (a PID the kernel gave another process since is left alone)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc:
        return cls(pid, process_start_time(pid) or -1)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def _owner() -> dict:
    return {"owner": os.getpid(), "owner_start": process_start_time(os.getpid())}


def _owner_gone(state: dict) -> bool:
    return process_start_time(int(state.get("owner", 0))) != state.get("owner_start")


def _unmount_under(path: Path) -> None:
    """Detach every mount below `path` (deepest first): a container's rootfs, an overlay left by a
    build that was killed; rm -rf must not walk into them."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for point in sorted((p for p in points if p.startswith(f"{path}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_tree(path: Path) -> None:
    _unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def sweep_leftovers() -> None:
    """What an earlier run of this file left when it was killed (SIGKILL: no finalizer ran), found
    by the state file in its directory, whose owner process is gone."""
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}containerd-*"):
        state_file = d / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if _owner_gone(state):
            Containerd.from_state(d, state).close()
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}image-*"):
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if _owner_gone(state):
            _remove_tree(d)


# --- containerd of the test's own --------------------------------------------------------------

class Containerd:
    """A containerd with its own root, state, socket and config in one directory, and the
    containers the test runs in it. close() ends all of it by PID, also after a failure."""

    def __init__(self, directory: Path, cgroup: str):
        self.dir = directory
        self.sock = directory / "containerd.sock"
        self.cgroup = cgroup
        """The cgroup parent of the test's containers (/sys/fs/cgroup/*/<it>/<container>)."""
        self.daemon: Proc | None = None
        self.popen: subprocess.Popen | None = None
        self.containers: dict[str, dict[str, Proc]] = {}
        """name -> its init and its shim."""
        self._execs = 0

    @classmethod
    def from_state(cls, directory: Path, state: dict) -> Containerd:
        c = cls(directory, state["cgroup"])
        if state.get("daemon"):
            c.daemon = Proc(*state["daemon"])
        c.containers = {n: {k: Proc(*v) for k, v in procs.items()} for n, procs in state.get("containers", {}).items()}
        return c

    def save(self) -> None:
        state = {**_owner(), "cgroup": self.cgroup, "daemon": self.daemon and [self.daemon.pid, self.daemon.start],
                 "containers": {n: {k: [p.pid, p.start] for k, p in procs.items()}
                                for n, procs in self.containers.items()}}
        (self.dir / "state.json").write_text(json.dumps(state))

    def start(self) -> None:
        d = self.dir
        # No CRI plugin: the containers are run with ctr, as `ctr run` does (and the CRI plugin would
        # open a streaming port and look for CNI). opt: the default would make /opt/containerd.
        (d / "config.toml").write_text(f"""\
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
""")
        self.save()
        with open(d / "containerd.log", "wb") as log:
            proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.popen = proc
        self.daemon = Proc.of(proc.pid)
        self.save()
        deadline = time.monotonic() + 20
        while self.ctr("version", check=False).returncode != 0:
            assert proc.poll() is None, f"containerd exited with {proc.returncode}: {self.log_tail()}"
            assert time.monotonic() < deadline, f"containerd did not answer in 20 s: {self.log_tail()}"
            time.sleep(0.1)

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.dir / "containerd.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args]

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()}\n{self.log_tail()}")
        return proc

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()

    def run_pod(self, name: str, image: str, *, node_netns: Path, pod: dict) -> None:
        """A container as the kubelet would make the capture pod's (one container, hostNetwork)."""
        spec = pod["spec"]
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert spec["hostNetwork"] and not sc["privileged"] and sc["capabilities"]["drop"] == ["ALL"]
        # (no new privileges: ctr's default, which --allow-new-privs would undo)
        assert sc["allowPrivilegeEscalation"] is False
        added = [f"CAP_{c}" for c in sc["capabilities"]["add"]]
        flags = ["--with-ns", f"network:{node_netns}", "--cgroup", f"/{self.cgroup}/{name}", "--seccomp"]
        flags += [x for c in CAPABILITIES if f"CAP_{c}" not in added for x in ("--cap-drop", f"CAP_{c}")]
        flags += [x for c in added for x in ("--cap-add", c)]
        self.containers[name] = {}
        self.save()
        self.ctr("run", "-d", *flags, image, name, *container["command"])
        init = int(next(line.split()[1] for line in self.ctr("task", "ls").stdout.splitlines()[1:]
                        if line.split()[0] == name))
        with open(f"/proc/{init}/stat") as f:
            shim = int(f.read().rsplit(")", 1)[1].split()[1])  # (its parent: containerd-shim-runc-v2)
        self.containers[name] = {"init": Proc.of(init), "shim": Proc.of(shim)}
        self.save()

    def init_pid(self, name: str) -> int:
        return self.containers[name]["init"].pid

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        self._execs += 1
        return self.argv("task", "exec", "--exec-id", f"{PREFIX}{self._execs}", name, *argv)

    def exec(self, name: str, argv: Sequence[str]) -> ExecResult:
        proc = subprocess.run(self.exec_argv(name, argv), capture_output=True, timeout=30)
        return ExecResult(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)

    def task_pids(self, name: str) -> list[int]:
        """Host PIDs of the container's processes."""
        return [int(line.split()[0]) for line in self.ctr("task", "ps", name).stdout.splitlines()[1:] if line.strip()]

    def remove(self, name: str) -> None:
        if self.daemon is not None and self.daemon.alive():
            for args in (("task", "rm", "--force", name), ("containers", "rm", name)):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.ctr(*args, check=False, timeout=20)
        for p in self.containers.get(name, {}).values():  # (containerd gone or deaf: by PID; the
            p.kill()                                      # init takes its PID namespace along)
        self.containers.pop(name, None)
        self.save()

    def strays(self) -> list[Proc]:
        """Processes in this containerd's containers (their cgroups are ours) or naming its directory
        (containerd itself, its shims, ctr), found by those names of its own."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cgroups = (entry / "cgroup").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"/{self.cgroup}/" in cgroups or f"{self.dir}/".encode() in cmdline:
                found.append(Proc.of(int(entry.name)))
        return found

    def close(self) -> None:
        try:
            for name in list(self.containers):
                self.remove(name)
        finally:
            try:
                self._stop_daemon()
            finally:
                strays = self.strays()  # (a container started but not recorded yet, when the test was killed)
                for p in strays:
                    p.kill()
                deadline = time.monotonic() + 5
                while any(p.alive() for p in strays) and time.monotonic() < deadline:
                    time.sleep(0.05)
                for controller in Path("/sys/fs/cgroup").glob(f"*/{self.cgroup}"):
                    for sub in sorted(controller.glob("**/"), key=lambda p: len(str(p)), reverse=True):
                        with contextlib.suppress(OSError):
                            sub.rmdir()  # (only ever an empty one: what a removed container left)
                _remove_tree(self.dir)

    def _stop_daemon(self) -> None:
        if self.popen is not None:  # (ours: Popen reaps it)
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        elif self.daemon is not None:  # (an earlier run's: by PID and start time)
            self.daemon.kill(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.daemon.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.daemon.kill(signal.SIGKILL)


# --- the image ---------------------------------------------------------------------------------

def image_key() -> str:
    h = hashlib.sha256()
    for path in (CAPTURE_POD / "Dockerfile", CAPTURE_POD / "agent.py", CAPTURE_POD / "build.sh"):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(repr((MIRROR, MMDEBSTRAP, BASE_CHANGES)).encode())
    return h.hexdigest()[:16]


def _step(argv: Sequence[str], log: Path, *, env: dict | None = None, what: str) -> None:
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(argv)}\n".encode())
        f.flush()
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                              timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise AssertionError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def build_image(tag: str, archive: Path, containerd: Containerd) -> None:
    """mmdebstrap's bookworm -> podman (a storage of its own) -> build.sh --engine podman --base it
    --output ARCHIVE --load microk8s (the stand-in: ctr on the test's containerd)."""
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}image-"))
    (work / "state.json").write_text(json.dumps(_owner()))
    log = work / "build.log"
    base = f"localhost/{PREFIX}base:{tag.rsplit(':', 1)[1]}"
    # podman's storage, run and temporary files, locks and network configuration all in `work`:
    # nothing of podman's own on the machine is used or left (but its blob-info cache, which has no
    # setting: removed below if this made it). runc: this machine mixes cgroup v1 and v2, which
    # crun refuses. No events (no journald here). The build's RUN steps have the host's network
    # (build.sh): podman's default would put a CNI bridge and firewall rules on this machine.
    (work / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/storage"\n'
                                       f'runroot = "{work}/run"\n')
    (work / "containers.conf").write_text(f"""\
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
tmp_dir = "{work}/libpod"
static_dir = "{work}/storage/libpod"
volume_path = "{work}/volumes"
image_copy_tmp_dir = "{work}/tmp"
[network]
network_config_dir = "{work}/cni"
""")
    (work / "tmp").mkdir()
    (work / "bin").mkdir()
    stand_in = work / "bin" / "microk8s"
    stand_in.write_text(f"""#!/bin/sh
# microk8s' `microk8s ctr` is ctr on the snap's containerd, namespace k8s.io: here the test's.
[ "$1" = ctr ] || {{ echo "microk8s stand-in: only ctr" >&2; exit 2; }}
shift
exec {' '.join(containerd.argv())} "$@"
""")
    stand_in.chmod(0o755)
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
           "CONTAINERS_CONF": str(work / "containers.conf"), "TMPDIR": str(work / "tmp"),
           "PATH": f"{work / 'bin'}:{os.environ.get('PATH', '')}"}
    made = [p for p in BLOB_INFO_CACHE if not p.exists()]
    try:
        _step(["mmdebstrap", *MMDEBSTRAP, "bookworm", str(work / "base.tar"), MIRROR], log, what="mmdebstrap")
        _step(["podman", "import", *(x for c in BASE_CHANGES for x in ("--change", c)), str(work / "base.tar"), base],
              log, env=env, what="podman import")
        (work / "base.tar").unlink()
        _step(["bash", str(CAPTURE_POD / "build.sh"), "--engine", "podman", "--base", base, "--tag", tag,
               "--output", str(work / "capture.tar"), "--load", "microk8s"], log, env=env, what="capture-pod/build.sh")
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.glob("*.tar"):  # (one archive, the current one: each is ~200 MB)
            old.unlink(missing_ok=True)
        shutil.move(str(work / "capture.tar"), str(archive) + ".part")
        os.replace(str(archive) + ".part", archive)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["podman", "rmi", "--force", tag, base], env=env, capture_output=True, timeout=120)
        _remove_tree(work)
        if made:
            if made[0].is_dir():
                shutil.rmtree(made[0], ignore_errors=True)
            else:
                made[0].unlink(missing_ok=True)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing {', '.join(missing)}: ./dev.sh test {Path(__file__).name} installs them"
    sweep_leftovers()
    token = secrets.token_hex(3)
    c = Containerd(Path(tempfile.mkdtemp(prefix=f"{PREFIX}containerd-")), cgroup=f"{PREFIX}{token}")
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def image(containerd: Containerd) -> str:
    key = image_key()
    tag = f"localhost/{PREFIX}capture:{key}"
    archive = CACHE / f"tracer-capture-{key}.tar"
    cached = archive.exists() and containerd.ctr("images", "import", str(archive), check=False,
                                                 timeout=BUILD_TIMEOUT).returncode == 0
    if not cached:  # (none yet, or one that does not import: built anew)
        archive.unlink(missing_ok=True)
        build_image(tag, archive, containerd)
    assert tag in containerd.images()
    return tag


@pytest.fixture(scope="module")
def pods(lab: Lab, containerd: Containerd, image: str) -> Iterator[dict[str, str]]:
    """node -> its capture container, as tracer's capture pod manifest has it."""
    names = {}
    try:
        for node in lab.nodes:
            name = f"{PREFIX}{containerd.cgroup.removeprefix(PREFIX)}-{node.name}"
            pod = manifest(name=name, namespace="tracer-capture", node=node.name, run_id="t", image=image, deadline=600)
            names[node.name] = name
            containerd.run_pod(name, image, node_netns=NETNS_DIR / node.netns, pod=pod)
        yield names
    finally:
        for name in names.values():
            containerd.remove(name)


@pytest.fixture(scope="module")
def warm_pods(lab: Lab, containerd: Containerd, image: str) -> Iterator[dict[str, str]]:
    """node -> its warm agent container, as the agents' DaemonSet has it (its pod template: the
    agent server as the container's own command)."""
    template = k8s_agents.manifest(namespace="tracer-capture", image=image)["spec"]["template"]
    names = {}
    try:
        for node in lab.nodes:
            name = f"{PREFIX}{containerd.cgroup.removeprefix(PREFIX)}-agent-{node.name}"
            names[node.name] = name
            containerd.run_pod(name, image, node_netns=NETNS_DIR / node.netns, pod=template)
        for name in names.values():  # the readiness probe's own test
            probe = template["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
            deadline = time.monotonic() + 30
            while containerd.exec(name, probe).returncode != 0:
                assert time.monotonic() < deadline, f"the agent server in {name} does not listen"
                time.sleep(0.1)
        yield names
    finally:
        for name in names.values():
            containerd.remove(name)


def status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def assert_as_restricted_as_its_container(lab: Lab, node: str, pid: int, agent: AgentClient) -> None:
    """The agent process `pid`, seen from the host: the PID it told (in the container's
    namespace), only NET_RAW and NET_ADMIN, no new privileges, seccomp, the node's network."""
    st = status(Path(f"/proc/{pid}/status").read_text())
    assert st["NSpid"].split()[-1] == str(agent.pid)
    assert (int(st["CapEff"], 16), st["NoNewPrivs"], st["Seccomp"]) == (0x3000, "1", "2")
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(NETNS_DIR / lab.node(node).netns).st_ino


def one_request_then_collect(lab: Lab, agents: dict[str, AgentClient]) -> dict:
    """curl -> httpbin (HTTP 200), then every agent's captures; each agent's client exits 0."""
    res = lab.exec("curl", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                            f"http://{lab.pod('httpbin').ip}/get"])
    assert (res.returncode, res.stdout) == (0, b"200"), res.stderr
    caps = {node: agent.stop_and_collect(15) for node, agent in agents.items()}
    for agent in agents.values():
        assert agent.channel.proc.wait(10) == 0, agent.channel.diagnostics()
    return caps


# --- the tests -----------------------------------------------------------------------------------

def test_build_sh_documents_its_options() -> None:
    out = subprocess.run(["bash", str(CAPTURE_POD / "build.sh"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("--load microk8s|k3s|kind", "--engine docker|podman|buildah", "--platform", "--base", "--push"):
        assert option in out.stdout
    bad = subprocess.run(["bash", str(CAPTURE_POD / "build.sh"), "--load", "minikube"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--load takes microk8s, k3s or kind" in bad.stderr


def test_the_container_has_only_net_raw_and_net_admin_no_new_privileges_and_seccomp(lab, containerd, pods):
    for node, name in pods.items():
        res = containerd.exec(name, ["cat", "/proc/self/status"])
        assert res.returncode == 0, res.stderr
        st = status(res.stdout.decode())
        assert int(st["CapEff"], 16) == (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW) == 0x3000, st
        assert int(st["CapPrm"], 16) == int(st["CapBnd"], 16) == 0x3000 and int(st["CapInh"], 16) == 0
        assert (st["NoNewPrivs"], st["Seccomp"]) == ("1", "2")  # (2: a seccomp filter)
        # host network: the node's own network namespace, with its interfaces
        init = containerd.init_pid(name)
        assert os.stat(f"/proc/{init}/ns/net").st_ino == os.stat(NETNS_DIR / lab.node(node).netns).st_ino
        addrs = json.loads(containerd.exec(name, ["ip", "-j", "addr"]).stdout)
        assert lab.node(node).underlay_ip in {a["local"] for i in addrs for a in i.get("addr_info", [])}


@dataclass(frozen=True)
class ThroughPods:
    """Discovery's Backend with every node read done inside the node's capture container (as the
    Kubernetes backend reads nodes in its capture pods); pods as the lab has them."""

    lab: Lab
    containerd: Containerd
    pods: dict[str, str]

    def pod(self, name):
        return self.lab.backend().pod(name)

    def service(self, name, namespace=None, *, cluster_ip=None):
        return self.lab.backend().service(name, namespace, cluster_ip=cluster_ip)

    def exec_pod(self, pod, argv):
        return self.lab.exec(pod.name, argv)

    def exec_node(self, node, argv):
        return self.containerd.exec(self.pods[node], argv)


def test_reading_the_nodes_from_the_containers_finds_the_way_the_lab_finds(lab, containerd, pods):
    assert discover(ThroughPods(lab, containerd, pods), "curl", "httpbin") == discover(lab.backend(), "curl", "httpbin")


def test_kube_proxys_rule_is_read_through_the_container(lab, containerd, pods):
    """The image's iptables reads the node's nat table (kube-proxy's chains, as the lab's rules
    are written): the Service's KUBE-SEP rule found through the container is the lab's."""
    through = request_way(ThroughPods(lab, containerd, pods), "curl", "svc/httpbin", 80, "/get")
    direct = request_way(lab.backend(), "curl", "svc/httpbin", 80, "/get")
    assert through.way.service.rule and through.way.service.rule == direct.way.service.rule


def test_kube_proxys_nftables_table_is_read_through_the_container(lab, containerd, pods):
    """kube-proxy's nftables mode: the image's nft lists the node's table `ip kube-proxy` (with
    the container's NET_ADMIN only), as tracer reads it where iptables-save shows no KUBE chains."""
    topo = dataclasses.replace(lab.topology, kube_proxy="nftables")
    node = lab.node("worker1")
    netns = ["ip", "netns", "exec", node.netns]
    subprocess.run([*netns, "nft", "-f", "-"], input=nft_ruleset(topo), text=True, check=True, capture_output=True)
    try:
        through = containerd.exec(pods["worker1"], list(NFT_LIST))
        direct = subprocess.run([*netns, *NFT_LIST], capture_output=True, check=True)
        assert through.returncode == 0, through.stderr
        assert through.stdout == direct.stdout and b"10.152.183.50 . tcp . 80 : goto service-" in through.stdout
    finally:
        subprocess.run([*netns, "nft", "delete", "table", "ip", "kube-proxy"], capture_output=True)


def test_a_lab_request_is_captured_on_every_point_by_the_agent_in_the_image(lab, containerd, pods, tmp_path):
    way = discover(ThroughPods(lab, containerd, pods), "curl", "httpbin")
    plan = capture_plan(way, 80)
    assert set(plan) == {"worker1", "worker2"}
    agents: dict[str, AgentClient] = {}
    try:
        for node, specs in plan.items():
            argv = containerd.exec_argv(pods[node], [*AGENT, *agent_argv("t-image", specs)])
            stderr = tempfile.TemporaryFile(prefix=PREFIX)
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                    start_new_session=True)
            agents[node] = AgentClient(LabAgentChannel(proc, stderr), node)
        for node, agent in agents.items():
            assert agent.wait_ready(30) == [s.interface for s in plan[node]]

        # the agent itself, seen from the host: in the node's namespace, as restricted as its container
        for node, agent in agents.items():
            init = containerd.init_pid(pods[node])
            (pid,) = [p for p in containerd.task_pids(pods[node]) if p != init]
            assert_as_restricted_as_its_container(lab, node, pid, agent)

        curl, httpbin = lab.pod("curl"), lab.pod("httpbin")
        caps = one_request_then_collect(lab, agents)
    finally:
        for agent in agents.values():
            agent.channel.close()

    for node, specs in plan.items():
        assert set(caps[node]) == {s.interface for s in specs}
        for iface, cap in caps[node].items():
            assert cap.pcap[:4] == PCAP_NANO_MAGIC and cap.packets > 0 and cap.dropped == 0
            path = tmp_path / f"{node}-{iface}.pcap"
            path.write_bytes(cap.pcap)
            pcap, records = open_capture(path)
            frames = [decode(pcap.interfaces[0].linktype, r.data, r.orig_len) for r in records]
            assert len(frames) == cap.packets
            syns = [f for f in frames if f.tcp_flags is not None and f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN]
            assert [(fmt_ip(f.ip_src), fmt_ip(f.ip_dst), f.dport) for f in syns] == [(curl.ip, httpbin.ip, 80)], \
                f"{node}/{iface}: the SYN of curl -> httpbin, once"
            if iface == lab.node(node).underlay_nic:  # inside the nodes' VXLAN tunnel
                (tunnel,) = syns[0].tunnels
                assert (tunnel.type, fmt_ip(tunnel.outer_ip_src), fmt_ip(tunnel.outer_ip_dst)) == (
                    "vxlan", lab.node(curl.node).underlay_ip, lab.node(httpbin.node).underlay_ip)



def test_the_warm_agent_server_in_the_image_forks_agents_that_capture_as_restricted_as_its_container(
        lab, containerd, warm_pods, tmp_path):
    """The DaemonSet's container under containerd: its server forks an agent for each exec of the
    thin client (`agent.py --via`, as tracer.cluster.k8s.backend runs it), which captures the lab
    request in the node's namespace with the container's capabilities, and ends with the run
    while the server stays."""
    way = discover(lab.backend(), "curl", "httpbin")
    plan = capture_plan(way, 80)
    agents: dict[str, AgentClient] = {}
    try:
        for node, specs in plan.items():
            argv = containerd.exec_argv(warm_pods[node], [*AGENT, "--via", k8s_agents.SOCKET,
                                                          *agent_argv("t-warm-image", specs)])
            stderr = tempfile.TemporaryFile(prefix=PREFIX)
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                    start_new_session=True)
            agents[node] = AgentClient(LabAgentChannel(proc, stderr), node)
        for node, agent in agents.items():
            assert agent.wait_ready(30) == [s.interface for s in plan[node]], agent.channel.diagnostics()
        for node, agent in agents.items():  # the forked agent: the server's child, as restricted
            server = containerd.init_pid(warm_pods[node])
            (pid,) = [p for p in containerd.task_pids(warm_pods[node])
                      if status(Path(f"/proc/{p}/status").read_text())["PPid"] == str(server)]
            assert_as_restricted_as_its_container(lab, node, pid, agent)
        caps = one_request_then_collect(lab, agents)
    finally:
        for agent in agents.values():
            agent.channel.close()
    for node, specs in plan.items():
        assert set(caps[node]) == {s.interface for s in specs}
        assert all(c.pcap[:4] == PCAP_NANO_MAGIC and c.packets >= 10 and c.dropped == 0 for c in caps[node].values())
    for node, name in warm_pods.items():  # the agents are gone, each server still listens
        deadline = time.monotonic() + 10
        while containerd.task_pids(name) != [containerd.init_pid(name)]:
            assert time.monotonic() < deadline, containerd.task_pids(name)
            time.sleep(0.05)
        assert containerd.exec(name, ["test", "-S", k8s_agents.SOCKET]).returncode == 0
