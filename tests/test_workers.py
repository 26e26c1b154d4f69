"""Reading pcap files in processes of their own (tracer.capture.workers): the same result as in one
process, and nothing left behind when a worker fails, vanishes, or tracer is interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from factories import ROOT, SAMPLES, SCENARIOS, children, run_cli, wait_for
from tracer.capture import fastpath, workers
from tracer.decode import VXLAN_PORTS
from tracer.capture.sightings import PointStats
from tracer.capture.pcapio import CaptureFile, Interface
from tracer.capture.workers import Workers, WorkerError


def summary(capsys, path, *args: str) -> str:
    code, out, err = run_cli(capsys, "analyze", str(path), "--summary", "-o", "json", *args)
    assert code == 0, err
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("chunk", [1 << 20, 2048])  # one batch a file; many (merged across files)
def test_same_document_as_in_one_process(capsys, monkeypatch, forks, scenario, chunk):
    monkeypatch.setattr(fastpath, "CHUNK", chunk)  # (the workers are forks: they read with it too)
    alone = summary(capsys, SAMPLES / scenario, "--jobs", "1")
    assert forks == []
    together = summary(capsys, SAMPLES / scenario, "--jobs", "8")
    pcaps = sorted((SAMPLES / scenario).glob("*/*.pcap"))
    # (any-http-get is tcpdump -i any: Linux cooked frames, read in this process)
    assert len(forks) == (0 if scenario == "any-http-get" else min(7, len(pcaps)))
    assert together == alone


def test_warnings_and_statistics_come_back(capsys, forks, tmp_path):
    d = tmp_path / "cut"
    shutil.copytree(SAMPLES / "http-get", d)
    eth1 = d / "worker2" / "eth1.pcap"
    eth1.write_bytes(eth1.read_bytes()[:-30])  # the last frame cut short
    alone = summary(capsys, d, "--jobs", "1")
    together = summary(capsys, d, "--jobs", "16")
    assert str(eth1) in forks
    assert together == alone
    assert "worker2/eth1.pcap: file cut short in packet" in together


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "any-http-get"])
def test_some_files_here_some_in_workers(capsys, monkeypatch, forks, scenario):
    """The default: only the big files in workers, the others read here, in between."""
    alone = summary(capsys, SAMPLES / scenario, "--jobs", "1")
    sizes = sorted(p.stat().st_size for p in (SAMPLES / scenario).glob("*/*.pcap"))
    monkeypatch.setattr(workers, "cpus", lambda: 2)
    monkeypatch.setattr(workers, "MIN_BYTES", sizes[-1])  # (the biggest: the underlay NICs, VXLAN)
    assert summary(capsys, SAMPLES / scenario) == alone
    assert 0 < len(forks) < len(sizes)


def test_small_files_stay_in_this_process_by_default(capsys, forks, monkeypatch):
    monkeypatch.setattr(workers, "cpus", lambda: 2)
    summary(capsys, SAMPLES / "http-get")
    assert forks == []  # (each far below workers.MIN_BYTES)
    monkeypatch.setattr(workers, "MIN_BYTES", 1)
    summary(capsys, SAMPLES / "http-get")
    assert len(forks) == len(list((SAMPLES / "http-get").glob("*/*.pcap")))
    monkeypatch.setattr(workers, "cpus", lambda: 1)
    summary(capsys, SAMPLES / "http-get")
    assert len(forks) == len(list((SAMPLES / "http-get").glob("*/*.pcap")))  # (no more on one CPU)


def fifo_capture(tmp_path) -> CaptureFile:
    """A capture 'file' that is a named pipe nobody writes: its worker blocks opening it."""
    path = tmp_path / "eth1.pcap"
    os.mkfifo(path)
    return CaptureFile(path=str(path), format="pcap", interfaces=[Interface(linktype=1, ts_units=10**9)])


def test_a_worker_that_vanishes_is_an_error_not_a_hang(tmp_path):
    w = Workers(2)
    batches = w.read(fifo_capture(tmp_path), 0, PointStats(), VXLAN_PORTS, print)
    (pid,) = w.pids
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match=r"eth1.pcap: the process reading it ended unexpectedly \(killed by signal 9\)"):
        next(batches)
    assert w.pids == [] and not os.path.exists(f"/proc/{pid}")


def test_a_worker_that_fails_says_why(tmp_path):
    w = Workers(2)
    gone = CaptureFile(path=str(tmp_path / "gone.pcap"), format="pcap", interfaces=[Interface(linktype=1)])
    with pytest.raises(WorkerError, match=r"(?s)gone.pcap: reading it failed in its process:.*FileNotFoundError"):
        list(w.read(gone, 0, PointStats(), VXLAN_PORTS, print))
    assert w.pids == []


def test_close_kills_and_reaps_what_is_left(tmp_path):
    w = Workers(2)
    w.read(fifo_capture(tmp_path), 0, PointStats(), VXLAN_PORTS, print)
    (pid,) = w.pids
    w.close()
    assert w.pids == [] and not os.path.exists(f"/proc/{pid}")


def blocked_analyze(tmp_path) -> tuple[subprocess.Popen, int]:
    """tracer analyze --summary -j 2 on a pcap that is a named pipe: tracer reads its header, its
    worker then blocks opening it again. Returns the process (the leader of a process group of
    its own, as in a terminal) and its worker's pid."""
    node = tmp_path / "worker1"
    node.mkdir()
    fifo = node / "eth1.pcap"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "analyze", str(tmp_path), "--summary", "-o", "json",
                             "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    header = bytes.fromhex("4d3cb2a1020004000000000000000000ffff000001000000")  # pcap, ns, Ethernet
    writer = threading.Thread(target=lambda: fifo.write_bytes(header), daemon=True)
    writer.start()
    writer.join(20)
    worker = wait_for(lambda: children(proc.pid), timeout=20)[0]
    return proc, worker


def test_ctrl_c_ends_tracer_and_its_workers(tmp_path):
    proc, worker = blocked_analyze(tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # (as a terminal sends it: to tracer and its workers)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "tracer: interrupted" in err and "Traceback" not in err
    assert not os.path.exists(f"/proc/{worker}")


def test_a_worker_dies_with_a_killed_tracer(tmp_path):
    proc, worker = blocked_analyze(tmp_path)
    try:
        proc.kill()
        proc.wait(timeout=20)
        wait_for(lambda: not os.path.exists(f"/proc/{worker}") or _zombie(worker), timeout=20)
    finally:
        if os.path.exists(f"/proc/{worker}") and not _zombie(worker):
            os.kill(worker, signal.SIGKILL)  # (ours: the test started it)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_no_process_to_be_had_reads_here(capsys, monkeypatch):
    alone = summary(capsys, SAMPLES / "http-get", "--jobs", "1")
    fds = len(os.listdir("/proc/self/fd"))
    tried = []

    def fork():
        tried.append(1)
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", fork)
    assert summary(capsys, SAMPLES / "http-get", "--jobs", "8") == alone
    assert len(tried) == 8  # (each of the 8 files asked for a process, got none, was read here)
    assert len(os.listdir("/proc/self/fd")) == fds  # (the pipes closed again)


def test_a_bad_file_after_a_forked_one_leaves_nothing_open(capsys, forks, tmp_path):
    shutil.copytree(SAMPLES / "http-get" / "worker1", tmp_path / "worker1")
    (tmp_path / "worker1" / "zz.pcap").write_text("not a capture\n")  # opened after the others
    fds = sorted(os.listdir("/proc/self/fd"))
    code, out, err = run_cli(capsys, "analyze", str(tmp_path), "--summary", "-o", "json", "-j", "8")
    assert code == 3 and "zz.pcap" in err
    assert len(forks) == 3
    assert sorted(os.listdir("/proc/self/fd")) == fds and children(os.getpid()) == []
