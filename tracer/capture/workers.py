"""Reading big pcap files in processes of their own: the fast reader's work on another CPU.

In summary mode the correlator's time goes about half to reading frames into sightings
(tracer.capture.fastpath) and half to gathering and folding them. The reading of one file depends on
nothing but that file, so each big file the fast reader takes (pcap or pcapng of Ethernet frames)
can be read by a forked process of its own, which sends its sightings back through a pipe in
batches, pickled without a memo (a sighting
costs ~0.2 us to send and ~0.5 us to take in, against 2-3 us to read; a TCP segment's identity
is one bytes object for that, see tracer.capture.sightings.identity). The correlator takes each file's batches
when its merge needs them, as from the reader in its own process: same batches, same order,
same warnings, same point statistics, same output (tests/test_workers.py).

A worker process only reads its file and writes to its pipe. It ignores Ctrl-C (the parent
decides), dies with its parent (PR_SET_PDEATHSIG), stops when the parent stops reading (a broken
pipe), and the parent kills and reaps whatever is left when the correlator is done, however it
ended (`Workers.close`).
"""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

from tracer.capture.fastpath import pcap_sightings
from tracer.capture.sightings import MAX_IPS, PointStats
from tracer.errors import TracerError
from tracer.capture.pcapio import CaptureFile

MIN_BYTES = 4 << 20
"""Files smaller than this are read in the correlator's own process (a fork costs milliseconds)."""
MAX_WORKERS = 32
_HEADER = struct.Struct("<IB")  # payload length, kind
_BATCH, _END, _FAILED = 1, 2, 3
_PIPE_BYTES = 1 << 20  # room for about two batches ahead of the parent
F_SETPIPE_SZ = 1031


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerError(TracerError):
    """A reading process failed or vanished."""


class Workers:
    """The reading processes of one correlator run: started by `read`, ended by `close`."""

    def __init__(self, jobs: int | None):
        """`jobs`: processes reading at once, this one included (CorrelationOptions.jobs); None: one per
        big file when there is more than one CPU."""
        self.limit = (MAX_WORKERS if cpus() > 1 else 0) if jobs is None else jobs - 1
        """How many may be started (0: none, every file is read in this process)."""
        self.sized = jobs is None
        """Only files of MIN_BYTES or more (when nobody asked for a number of jobs)."""
        self.pids: list[int] = []
        self.pipes: dict[int, BinaryIO] = {}
        """Worker pid -> the reading end of its pipe (closed by `close` if not read to its end)."""

    def wants(self, path: str) -> bool:
        """Whether to read this file in a process of its own."""
        if len(self.pids) >= self.limit:
            return False
        try:
            return not self.sized or os.path.getsize(path) >= MIN_BYTES
        except OSError:
            return False

    def read(self, cap: CaptureFile, point: int, stats: PointStats, vxlan_ports: frozenset[int],
             warn: Callable[[str], None]) -> Iterator[list[tuple]] | None:
        """Start a process reading `cap` as tracer.capture.fastpath.pcap_sightings would; its batches.
        None if no process can be started now (no more pipes or processes): read it here then.

        The process starts at once (so that every file is being read while the first ones are
        merged); `stats` is kept up to date from it as pcap_sightings keeps it."""
        _prepare()  # (what the worker needs, loaded here: nothing to import after the fork)
        try:
            r, w = os.pipe()
        except OSError:
            return None
        try:
            import fcntl
            fcntl.fcntl(w, F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # (a smaller pipe only means less read-ahead)
        parent = os.getpid()
        inherited = [f.fileno() for f in self.pipes.values()]
        # Ctrl-C held until the worker is known (and the worker ignores it before it can act on it)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            try:
                pid = os.fork()
            except OSError:
                os.close(r)
                os.close(w)
                return None
            if pid == 0:  # the worker: never returns
                _work(parent, r, w, inherited, cap, point, vxlan_ports)
            os.close(w)
            self.pids.append(pid)
            self.pipes[pid] = os.fdopen(r, "rb", buffering=_PIPE_BYTES)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return self._batches(pid, cap, stats, warn)

    def _batches(self, pid: int, cap: CaptureFile, stats: PointStats,
                 warn: Callable[[str], None]) -> Iterator[list[tuple]]:
        import pickle

        path = cap.path
        f = self.pipes[pid]
        read, loads, header = f.read, pickle.loads, _HEADER.unpack
        while True:
            head = read(_HEADER.size)
            size, kind = header(head) if len(head) == _HEADER.size else (0, 0)
            data = read(size) if size else b""
            if not size or len(data) < size:  # (no message is empty: it ended before or while sending)
                raise WorkerError(f"{path}: the process reading it ended unexpectedly ({self._reap(pid)})",
                                  "run again; if it recurs, pass --jobs 1 to read every file in one process")
            msg = loads(data)
            if kind == _BATCH:
                batch, first, last, cap.read = msg
                stats.widen(first, last)
                yield batch
            elif kind == _END:
                _absorb(stats, msg[0])
                for w in msg[1]:
                    warn(w)
                cap.resume = msg[2]  # (pcapng: where the general reader reads on, if anywhere)
                break
            else:
                self._reap(pid)
                raise WorkerError(f"{path}: reading it failed in its process:\n{msg}",
                                  "run again with --jobs 1 to read every file in one process")
        self._reap(pid)

    def _reap(self, pid: int) -> str:
        """Wait for a worker that has ended (or is ending); how it ended."""
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = None
        self.pids.remove(pid)
        f = self.pipes.pop(pid, None)
        if f is not None:
            f.close()
        if status is None:
            return "already reaped"
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit status {os.waitstatus_to_exitcode(status)}"

    def close(self) -> None:
        """Kill and reap every worker still there (after an error, Ctrl-C or an unfinished read).
        A second Ctrl-C waits until that is done."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            for pid in self.pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in list(self.pids):
                self._reap(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


_HELD = {signal.SIGINT, signal.SIGTERM}
_LIBC = None


def _prepare() -> None:
    """Load what a worker uses (modules, libc for prctl) in the parent, before any fork: a forked
    child of a process with threads must not import or dlopen (their locks may be held)."""
    global _LIBC
    import ctypes
    import importlib

    for name in ("io", "pickle", "traceback"):
        importlib.import_module(name)
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = False


def _absorb(stats: PointStats, state: tuple) -> None:
    """Add a worker's statistics of its file to the point's (which other files may share)."""
    frames, undecoded, encapsulated, calico_mac, ips, first, last = state
    stats.frames += frames
    stats.undecoded += undecoded
    stats.encapsulated += encapsulated
    stats.calico_mac = stats.calico_mac or calico_mac
    for ip in ips:
        if len(stats.ips) >= MAX_IPS:
            break
        stats.ips.add(ip)
    stats.widen(first, last)


def _work(parent: int, r: int, fd: int, inherited: list[int], cap: CaptureFile, point: int,
          vxlan_ports: frozenset[int]) -> None:
    """The worker process's whole life: read, send, leave (os._exit: none of the parent's exit
    handlers, no flush of its buffers). Starts with Ctrl-C and SIGTERM held (see Workers.read)."""
    code = 1
    try:
        # Ctrl-C reaches the whole process group: the parent decides (and kills this one)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        for other in (r, *inherited):  # (the other pipes' reading ends are the parent's business)
            os.close(other)
        _die_with(parent)
        os.nice(10)  # the parent, which all workers feed, is the one to keep busy
        import io
        import pickle

        out = os.fdopen(fd, "wb")
        stats = PointStats()
        said: list[str] = []
        buf = io.BytesIO()

        def send(kind: int, msg: object) -> None:
            buf.seek(0)
            buf.truncate()
            p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
            # No memo: a batch is a list of flat tuples, nothing in it refers to itself; without
            # one, pickling takes half as long and unpickling (in the busier parent) a third less.
            p.fast = True
            p.dump(msg)
            data = buf.getvalue()
            out.write(_HEADER.pack(len(data), kind))
            out.write(data)
            out.flush()  # (a buffered writer: all of it, however the pipe takes it)

        try:
            for batch in pcap_sightings(cap, point, stats, vxlan_ports, said.append):
                send(_BATCH, (batch, stats.first, stats.last, cap.read))
            send(_END, ((stats.frames, stats.undecoded, stats.encapsulated, stats.calico_mac, stats.ips,
                         stats.first, stats.last), said, cap.resume))
            code = 0
        except BrokenPipeError:
            pass  # the parent stopped reading: nothing more to do
        except BaseException:
            import traceback
            try:
                send(_FAILED, traceback.format_exc())
            except BaseException:
                pass
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """Be killed when the parent dies, even by SIGKILL (Linux)."""
    if _LIBC:
        _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)
