#!/usr/bin/env python3
"""tracer's capture agent: sniff a few interfaces of one node, each with a kernel BPF filter.

Runs with nothing but the standard library and scapy (with libpcap, which compiles the filters),
as `python3 agent.py --run-id ID --capture IFACE=BPF [--capture ...]`, in a node's network
namespace (the lab) or in a hostNetwork capture pod (Kubernetes, copied as /agent.py).

Protocol over stdin/stdout (stdout carries JSON lines, some followed by raw bytes):

  -> {"event": "ready", "run_id": ID, "interfaces": [...], "pid": PID}
         once every socket is open, bound, and has its filter attached
  <- "stop\\n" on stdin, or EOF of stdin, or SIGTERM/SIGINT, or --max-seconds: stop
  -> {"event": "pcap", "interface": IFACE, "packets": K, "bytes": N, "dropped": D, "offloads": {...}}
         + N bytes of pcap, one per interface, after draining (nanosecond pcap, the interface's own
         link type); offloads: the interface's segmentation and receive offloads as `ethtool -k`
         names them (tx-tcp-segmentation: "on"/"off", ...), {} where the kernel does not say
  -> {"event": "done", "run_id": ID}   then exit 0
  -> {"event": "error", "message": ..., "hint": ...}   then exit 1
  with --stream, after ready, also each frame as it is captured:
  -> {"event": "frame", "interface": IFACE, "time": T, "time_ns": NS, "linktype": L, "bytes": N}  + N bytes

The sniffers are packet sockets (both directions) with the filter libpcap compiles (through
scapy) attached before they are bound to the interface: opened with protocol 0 they hear
nothing until then, so no unfiltered frame is ever read and "ready" means exactly that (scapy's
L2ListenSocket opens with ETH_P_ALL, hears every interface with no buffer until its bind and
flushes: the re-bind waits for an RCU grace period, ~11 ms per interface, most of an agent's way
from its arguments to "ready"). The agent reads them itself, with recvmsg(): the kernel's
timestamp in nanoseconds as it is (SO_TIMESTAMPNS; scapy's reader makes a float of it, and hops
of one node a few hundred nanoseconds apart would tie), VLAN tags the NIC took off put back
(PACKET_AUXDATA, as scapy does). scapy's RawPcapWriter writes the pcaps. One poll() loop serves
all sockets, stdin and signals: no threads, no races.

Draining: packet sockets queue each frame at once (no ring blocks as in libpcap without
immediate mode), so on stop the agent reads every socket until it has been empty for --linger
seconds (what is still in flight on the node arrives meanwhile), then writes the pcaps; or
sooner, when every TCP connection each socket has seen has ended there (FIN acknowledged both
ways, or RST: the exchange's last packet is in), unless --no-early-stop.

Standby: `agent.py [--run-id ID] --argv-from-stdin` starts and imports scapy (~0.3 s), then
reads its real arguments as one JSON list on a line of stdin (EOF instead: exit 0 at once) and
goes on as if started with them; the command line only names the run in the process table. A
launcher can so start it while it still works out what to capture.

Warm: `agent.py --serve SOCKET` imports scapy once and listens on a Unix socket (mode 0600 in a
0700 directory: root's only); each connection gets a forked agent in standby whose stdin and
stdout are that connection (the protocol above, unchanged: its first line is the arguments; the
client's shutdown of its side is the EOF that stops it). It prints `{"event": "serving", ...}`
once it listens. SIGTERM/SIGINT end it and its agents (each gets SIGTERM: it drains and sends
its pcaps first). A connection costs a fork, not an interpreter start and scapy's import.
`agent.py --via SOCKET ARGS...` is the thin client for where only a command can be run (an exec
into a pod): it sends ARGS as the first line and then carries stdin to the socket and the socket
to stdout, importing nothing but the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
from types import SimpleNamespace

SOL_PACKET = 263
ETH_P_ALL = 0x0003
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS as well
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06
SO_RCVBUFFORCE = 33
RCVBUF = 8 << 20  # room for bursts while the loop is busy elsewhere
FRAME_BUFFER = 256 * 1024  # GRO can hand over one frame of up to 64 KiB (more with BIG TCP)
DRAIN_MAX_SECONDS = 3.0
_TIMESPEC = struct.Struct("@qq")
_AUXDATA = struct.Struct("@IIIHHHH")  # struct tpacket_auxdata
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)
_STATS = struct.Struct("@II")
_VLAN = struct.Struct("!HH")


class AgentError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


class Capture:
    """One interface: a filtered packet socket and the frames it has captured."""

    def __init__(self, interface: str, bpf: str):
        self.interface, self.bpf = interface, bpf
        self.frames: list[tuple[int, int, bytes, int]] = []  # (sec, nsec, data, wire length)
        self.bytes = 0
        self.dropped = 0
        self.linktype = _linktype(interface)
        self.sock = _open_sniffer(interface, bpf, self.linktype)
        self.connections = Connections()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_available(self, buf: bytearray, view: memoryview, on_frame=None) -> int:
        """Read every frame queued now (non-blocking); return how many."""
        n = 0
        while True:
            try:
                size, anc, flags, _ = self.sock.recvmsg_into([view], _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return n
            sec = nsec = tag = None
            wirelen = size if not flags & socket.MSG_TRUNC else max(size, len(buf))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                    status, wirelen, _, _, _, tci, tpid = _AUXDATA.unpack_from(data)  # (tp_len: on the wire)
                    if tci or status & TP_STATUS_VLAN_VALID:  # a VLAN tag the kernel took off: put it back
                        tag = _VLAN.pack(tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
            if sec is None:
                ns = time.time_ns()
                sec, nsec = divmod(ns, 1_000_000_000)
            data = bytes(view[:size])
            if tag is not None and self.linktype == LINKTYPE_ETHERNET and size >= 12:
                data = (data[:12] + tag + data[12:])[:FRAME_BUFFER]
                wirelen += 4
            self.frames.append((sec, nsec, data, wirelen))
            self.bytes += size
            self.connections.see(self.linktype, data)
            n += 1
            if on_frame is not None:
                on_frame(self, sec, nsec, data)

    def read_stats(self) -> None:
        """Frames the kernel dropped because the socket's queue was full (since the last read)."""
        try:
            self.dropped += _STATS.unpack(self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size))[1]
        except OSError:
            pass

    def pcap(self) -> bytes:
        """The frames as a nanosecond pcap (magic 0xa1b23c4d), written by scapy's RawPcapWriter."""
        out = io.BytesIO()
        writer = _scapy().RawPcapWriter(out, linktype=self.linktype, nano=True, sync=False, snaplen=FRAME_BUFFER)
        writer.write_header(None)
        for sec, nsec, data, wirelen in self.frames:
            writer.write_packet(data, sec=sec, usec=nsec, caplen=len(data), wirelen=wirelen)
        writer.flush()
        return out.getvalue()


# --- offloads: what `ethtool -k` says, by the ioctl ethtool uses (no ethtool in the image) --------

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS, ETHTOOL_GSSET_INFO, ETHTOOL_GFEATURES = 0x1B, 0x37, 0x3A
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
OFFLOADS = ("tx-tcp-segmentation", "tx-generic-segmentation", "tx-udp_tnl-segmentation", "tx-udp-segmentation",
            "rx-gro", "rx-gro-hw", "rx-lro")
"""The features that cut or merge what a capture on the interface sees (DATAPATHS.md §9)."""


def offloads(interface: str) -> dict[str, str]:
    """The interface's OFFLOADS, each "on" or "off" ("off [fixed]" where it cannot change), read
    as ethtool does (SIOCETHTOOL: the feature names, then ETHTOOL_GFEATURES' active bits); {}
    where the kernel refuses (no such device, an old kernel)."""
    import array
    import fcntl
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            def call(buf: array.array) -> None:
                ifr = struct.pack("16sP", interface.encode()[:15], buf.buffer_info()[0])
                fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)

            info = array.array("B", struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
            call(info)
            count = struct.unpack_from("=I", info, 16)[0]
            names = array.array("B", struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
                                + bytes(count * ETH_GSTRING_LEN))
            call(names)
            blocks = (count + 31) // 32
            feats = array.array("B", struct.pack("=II", ETHTOOL_GFEATURES, blocks) + bytes(16 * blocks))
            call(feats)
    except OSError:
        return {}
    raw = names.tobytes()[12:]
    out = {}
    for i in range(count):
        name = raw[i * ETH_GSTRING_LEN:(i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
        if name in OFFLOADS:
            available, _, active, never = struct.unpack_from("=IIII", feats, 8 + 16 * (i // 32))
            bit = 1 << (i % 32)
            out[name] = ("on" if active & bit else "off") + ("" if available & bit and not never & bit else " [fixed]")
    return out


# --- knowing when the exchange is over -------------------------------------------------------------
#
# On stop, a capture may end before --linger has passed once every TCP connection it has seen is
# closed there: a FIN from each side acknowledged by the other, or a RST. After that last ACK no
# packet of these connections is due, so waiting for quiet would only add --linger to every run.
# Anything else (no TCP seen, a connection still open, a frame this cannot parse) keeps the
# quiet rule. Parsed: Ethernet (802.1Q), raw IP, IPv4/IPv6, and TCP inside VXLAN or IP-in-IP.

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
_U16 = struct.Struct("!H")
_TCP = struct.Struct("!HHIIBB")


def tcp_segment(linktype: int, data: bytes):
    """(src, dst, sport, dport, flags, seq, ack, payload length) of the innermost TCP, or None."""
    off, ethertype = 0, None
    if linktype == LINKTYPE_ETHERNET:
        off, ethertype = 14, None
    for _ in range(4):  # at most this many layers (Ethernet, VLAN, IP, UDP/VXLAN, Ethernet, IP, ...)
        if ethertype is None and linktype == LINKTYPE_ETHERNET:
            if len(data) < off:
                return None
            ethertype = _U16.unpack_from(data, off - 2)[0]
            while ethertype in (0x8100, 0x88A8) and len(data) >= off + 4:
                ethertype = _U16.unpack_from(data, off + 2)[0]
                off += 4
        elif ethertype is None:  # raw IP: the version nibble says which
            ethertype = 0x0800 if len(data) > off and data[off] >> 4 == 4 else 0x86DD
        if ethertype == 0x0800:
            if len(data) < off + 20:
                return None
            ihl = (data[off] & 0x0F) * 4
            total = _U16.unpack_from(data, off + 2)[0]
            proto, src, dst = data[off + 9], data[off + 12:off + 16], data[off + 16:off + 20]
            l4, l4_end = off + ihl, off + total
        elif ethertype == 0x86DD:
            if len(data) < off + 40:
                return None
            proto, src, dst = data[off + 6], data[off + 8:off + 24], data[off + 24:off + 40]
            l4, l4_end = off + 40, off + 40 + _U16.unpack_from(data, off + 4)[0]
        else:
            return None
        if proto == 6:
            if len(data) < l4 + 14:
                return None
            sport, dport, seq, ack, doff, flags = _TCP.unpack_from(data, l4)
            return src, dst, sport, dport, flags, seq, ack, max(l4_end - l4 - (doff >> 4) * 4, 0)
        if proto == 17 and len(data) >= l4 + 16 and data[l4 + 8] & 0x08:  # VXLAN: flags with the I bit
            off, ethertype, linktype = l4 + 8 + 8 + 14, None, LINKTYPE_ETHERNET
        elif proto == 4:  # IP-in-IP
            off, ethertype = l4, 0x0800
        else:
            return None
    return None


class Connections:
    """The TCP connections one capture has seen, and whether each has ended there."""

    def __init__(self):
        self.open: dict[tuple, dict] = {}
        self.closed: set[tuple] = set()
        self.unknown = 0
        """Frames that were not TCP this parser knows: their end cannot be told."""

    def see(self, linktype: int, data: bytes) -> None:
        try:
            seg = tcp_segment(linktype, data)
        except (struct.error, IndexError):
            seg = None
        if seg is None:
            self.unknown += 1
            return
        src, dst, sport, dport, flags, seq, ack, length = seg
        a, b = (src, sport), (dst, dport)
        key = (a, b) if a <= b else (b, a)
        if key in self.closed:
            if flags & TCP_SYN and not flags & TCP_ACK:  # the 4-tuple reused: a new connection
                self.closed.discard(key)
            else:
                return
        conn = self.open.setdefault(key, {})
        if flags & TCP_RST:
            del self.open[key]
            self.closed.add(key)
            return
        if flags & TCP_FIN:  # the sequence number right after this side's FIN
            conn[("fin", a)] = (seq + length + (1 if flags & TCP_SYN else 0) + 1) & 0xFFFFFFFF
        if flags & TCP_ACK:
            fin = conn.get(("fin", b))
            if fin is not None and (ack - fin) & 0xFFFFFFFF < 0x80000000:
                conn[("acked", b)] = True
        if conn.get(("acked", a)) and conn.get(("acked", b)):
            del self.open[key]
            self.closed.add(key)

    def all_ended(self) -> bool:
        """Some TCP connection was seen, every one has ended, and nothing else was captured."""
        return bool(self.closed) and not self.open and not self.unknown


# ARPHRD_* (include/uapi/linux/if_arp.h) -> pcap link type. Devices without a link-layer header
# (IP-in-IP, SIT, GRE, tun, WireGuard) hand packet sockets bare IP packets: LINKTYPE_RAW.
LINKTYPE_ETHERNET, LINKTYPE_RAW = 1, 101
ARPHRD_LINKTYPES = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 768: LINKTYPE_RAW, 769: LINKTYPE_RAW,
                    776: LINKTYPE_RAW, 778: LINKTYPE_RAW, 823: LINKTYPE_RAW, 0xFFFE: LINKTYPE_RAW}


def _linktype(interface: str) -> int:
    """The pcap link type of an interface, from its ARPHRD type in sysfs."""
    try:
        with open(f"/sys/class/net/{interface}/type") as f:
            arphrd = int(f.read())
    except FileNotFoundError:
        raise AgentError(f"no interface {interface!r} in this network namespace",
                         hint="the way changed since discovery, or the agent runs in the wrong namespace") from None
    except (OSError, ValueError):
        return LINKTYPE_ETHERNET
    return ARPHRD_LINKTYPES.get(arphrd, LINKTYPE_ETHERNET)


_SCAPY: list = []  # [what the agent takes from scapy] once imported


def _scapy() -> SimpleNamespace:
    """scapy's packet socket and pcap writer, imported once (a standby agent does it while its
    launcher still works out what to capture: it is most of the agent's way to "ready")."""
    if not _SCAPY:
        import logging

        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # (no import-time chatter on stderr)
        try:
            from scapy.arch.common import compile_filter, free_filter
            from scapy.error import Scapy_Exception
            from scapy.libs.structures import sock_fprog
            from scapy.utils import RawPcapWriter
        except ImportError as e:
            raise AgentError(f"scapy is not available: {e}",
                             hint="the agent needs python3 with scapy and libpcap (pip install scapy)") from None
        try:
            free_filter(compile_filter("tcp", linktype=LINKTYPE_ETHERNET))  # (loads libpcap: ~7 ms, here too)
        except (ImportError, OSError, Scapy_Exception) as e:
            raise AgentError(f"libpcap is not available: {e}",
                             hint="the agent needs libpcap to compile its filters (apt-get install libpcap0.8)") from None
        _SCAPY.append(SimpleNamespace(compile_filter=compile_filter, free_filter=free_filter, sock_fprog=sock_fprog,
                                      RawPcapWriter=RawPcapWriter, Error=Scapy_Exception))
    return _SCAPY[0]


def _attach_filter(sock: socket.socket, bpf: str, linktype: int) -> None:
    """Attach `bpf` as libpcap compiles it for `linktype`, keeping whole frames: libpcap
    compiles for a snap length of 65,535 bytes, which cuts GRO/GSO super-frames (up to 64 KiB of
    IP, more with BIG TCP) silently (the kernel trims them before reading, so recvmsg() sees no
    MSG_TRUNC)."""
    scapy = _scapy()
    prog = scapy.compile_filter(bpf, linktype=linktype)
    try:
        for i in range(prog.bf_len):
            insn = prog.bf_insns[i]
            if insn.code == BPF_RET_K and insn.k:  # "accept, this many bytes"
                insn.k = FRAME_BUFFER
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(scapy.sock_fprog(prog.bf_len, prog.bf_insns)))
    finally:
        scapy.free_filter(prog)


def _open_sniffer(interface: str, bpf: str, linktype: int) -> socket.socket:
    """A packet socket for one interface, both directions, its filter attached before it is
    bound (protocol 0 until the bind: it hears nothing before, no unfiltered frame is ever read),
    its kernel timestamps in nanoseconds and its VLAN tags (auxiliary data) switched on, non-
    blocking. The agent reads it itself (Capture.read_available): recvmsg gives the timestamp as
    the kernel has it, where scapy's reader makes a float of it (a quarter of a microsecond
    apart, two hops of one node would tie)."""
    scapy = _scapy()
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise AgentError("no permission to open a packet socket", hint="the agent needs root or CAP_NET_RAW") from None
    try:
        try:
            _attach_filter(sock, bpf, linktype)
        except scapy.Error as e:
            raise AgentError(f"cannot compile the BPF filter {bpf!r}: {e}",
                             hint="check the filter's syntax (man pcap-filter); the agent needs libpcap") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        try:
            sock.bind((interface, ETH_P_ALL))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENXIO):
                raise AgentError(f"no interface {interface!r} in this network namespace",
                                 hint="the way changed since discovery, or the agent runs in the wrong namespace") from None
            raise
        sock.setblocking(False)
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)  # (reading them resets them)
        return sock
    except BaseException:
        sock.close()
        raise


class Output:
    """stdout as the protocol's byte stream; a vanished reader makes every write a no-op."""

    def __init__(self, stream):
        self.stream = stream
        self.broken = False

    def event(self, event: str, payload: bytes | None = None, **fields) -> None:
        if self.broken:
            return
        head = dict(event=event, **fields)
        if payload is not None:
            head["bytes"] = len(payload)
        try:
            self.stream.write(json.dumps(head).encode() + b"\n")
            if payload:
                self.stream.write(payload)
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.broken = True


class Agent:
    def __init__(self, args: argparse.Namespace, out: Output):
        self.args, self.out = args, out
        self.captures: list[Capture] = []
        self.stop_reason: str | None = None
        self._stdin_buf = b""
        self._buf = bytearray(FRAME_BUFFER)
        self._view = memoryview(self._buf)

    def open(self) -> None:
        for spec in self.args.capture:
            iface, sep, bpf = spec.partition("=")
            if not sep or not iface:
                raise AgentError(f"bad --capture {spec!r}", hint="use --capture IFACE=BPF")
            self.captures.append(Capture(iface, bpf))

    def watch_signals(self) -> None:
        """SIGTERM/SIGINT stop the agent (drain, then the pcaps): they wake the poll loop."""
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        # A launcher may have left them blocked (the mask survives exec): take them from here on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def run(self) -> None:
        wake_r = self._wake_r
        on_frame = self._stream_frame if self.args.stream else None
        by_fd = {c.fileno(): c for c in self.captures}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        poller.register(0, select.POLLIN | select.POLLHUP)
        poller.register(wake_r, select.POLLIN)
        self.out.event("ready", run_id=self.args.run_id, interfaces=[c.interface for c in self.captures],
                       pid=os.getpid())
        self._stdin_lines()  # what came with the arguments (standby)
        deadline = time.monotonic() + self.args.max_seconds
        while self.stop_reason is None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                self.stop_reason = "max-seconds"
                break
            for fd, mask in poller.poll(timeout * 1000):
                if fd in by_fd:
                    by_fd[fd].read_available(self._buf, self._view, on_frame)
                elif fd == 0:
                    self._read_stdin(poller)
                elif fd == wake_r:
                    os.read(wake_r, 512)
        self._drain(poller, by_fd, on_frame)

    def _on_signal(self, signum, frame) -> None:
        self.stop_reason = signal.Signals(signum).name

    def _read_stdin(self, poller) -> None:
        data = os.read(0, 4096)
        if not data:
            poller.unregister(0)
            self.stop_reason = "eof"
            return
        self._stdin_buf += data
        self._stdin_lines()

    def _stdin_lines(self) -> None:
        while b"\n" in self._stdin_buf:
            line, self._stdin_buf = self._stdin_buf.split(b"\n", 1)
            if line.strip() == b"stop":
                self.stop_reason = "stop"

    def _drain(self, poller, by_fd, on_frame) -> None:
        """Read until every socket has been empty for --linger seconds (bounded), or until every
        TCP connection captured has ended at every point (its last packet is in)."""
        for fd in list(by_fd):
            by_fd[fd].read_available(self._buf, self._view, on_frame)
        end = time.monotonic() + DRAIN_MAX_SECONDS
        quiet_since = time.monotonic()
        drain = select.poll()
        for fd in by_fd:
            drain.register(fd, select.POLLIN)
        while not self._exchange_over():
            now = time.monotonic()
            left = min(quiet_since + self.args.linger, end) - now
            if left <= 0:
                break
            events = drain.poll(left * 1000)
            if any(by_fd[fd].read_available(self._buf, self._view, on_frame) for fd, _ in events):
                quiet_since = time.monotonic()

    def _exchange_over(self) -> bool:
        """Every capture has seen each of its TCP connections end (see Connections)."""
        return self.args.early_stop and all(c.connections.all_ended() for c in self.captures)

    def _stream_frame(self, capture: Capture, sec: int, nsec: int, data: bytes) -> None:
        self.out.event("frame", data, interface=capture.interface, time=sec + nsec / 1e9,
                       time_ns=sec * 1_000_000_000 + nsec, linktype=capture.linktype)

    def finish(self) -> None:
        # The sockets stay open until the pcaps are out: closing a packet socket waits for an
        # RCU grace period (~15 ms each), which nobody needs to wait for.
        for c in self.captures:
            c.read_stats()
        for c in self.captures:
            self.out.event("pcap", c.pcap(), interface=c.interface, packets=len(c.frames), dropped=c.dropped,
                           linktype=c.linktype, offloads=offloads(c.interface))
        self.out.event("done", run_id=self.args.run_id, reason=self.stop_reason)

    def close(self) -> None:
        for c in self.captures:
            c.sock.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="agent.py", description="tracer's capture agent (see the module docstring)")
    p.add_argument("--argv-from-stdin", action="store_true",
                   help="standby: read the real arguments as a JSON list from a line of stdin (the others "
                        "on the command line then only name the run)")
    p.add_argument("--run-id", required=True, help="names this run in every event (and in the process table)")
    p.add_argument("--capture", action="append", default=[], metavar="IFACE=BPF", required=True,
                   help="an interface and its kernel BPF filter; repeatable")
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop by itself after this long")
    p.add_argument("--linger", type=float, default=0.05, metavar="SECONDS",
                   help="on stop, keep reading until the sockets were quiet this long")
    p.add_argument("--stream", action="store_true", help="also send each frame as it is captured")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="on stop, always wait for --linger of quiet, even when every TCP connection "
                        "captured has already ended (FIN acknowledged both ways, or RST)")
    return p.parse_args(argv)


def argv_from_stdin() -> tuple[list[str] | None, bytes]:
    """Standby: the arguments as a JSON list on one line of stdin (None at EOF), and what
    followed that line (the protocol's own stdin, e.g. an early "stop")."""
    # A launcher may have left them blocked (the mask survives exec): until the agent takes
    # them over, they end it as they end any process.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    _scapy()  # the slow part of getting ready, done while the launcher is still busy
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 4096)
        if not chunk:
            return None, b""
        data += chunk
    line, rest = data.split(b"\n", 1)
    argv = json.loads(line)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SystemExit("agent.py --argv-from-stdin: expected a JSON list of strings")
    return argv, rest


# --- warm: a server forking agents, and the thin client that reaches one -----------------------------

SERVE_BACKLOG = 64
SERVE_STOP_GRACE = 3.0  # seconds the agents get to send their pcaps when the server is stopped


def serve(path: str) -> int:
    """Listen on the Unix socket `path`; fork an agent in standby for each connection."""
    try:
        _scapy()  # once, here: what each agent would otherwise spend most of its start on
    except AgentError as e:
        Output(sys.stdout.buffer).event("error", message=e.message, hint=e.hint)
        return 1
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # an earlier server's, which died without removing it
    # Bound under another name and renamed once it listens: whoever sees the socket (a readiness
    # probe's `test -S`, the lab waiting for it) can connect to it.
    staging = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    old = os.umask(0o177)
    try:
        listener.bind(staging)
    finally:
        os.umask(old)
    listener.listen(SERVE_BACKLOG)
    os.rename(staging, path)
    inode = os.stat(path).st_ino
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # (wakes the loop to reap)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    Output(sys.stdout.buffer).event("serving", socket=path, pid=os.getpid())
    children: set[int] = set()
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    try:
        while not stopping:
            for fd, _ in poller.poll(1000):
                if fd == wake_r:
                    os.read(wake_r, 512)
                elif not stopping:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:  # (out of descriptors, buffers: the runs going on go on)
                        print(f"agent server: accept failed: {e}", file=sys.stderr, flush=True)
                        time.sleep(0.1)
                        continue
                    pid = _fork_for(conn, listener, (wake_r, wake_w))
                    if pid is not None:
                        children.add(pid)
            _reap(children)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # (not a newer server's)
                os.unlink(path)
        _end_children(children)
    return 0


SERVED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def _fork_for(conn: socket.socket, listener: socket.socket, wake: tuple[int, int]) -> int | None:
    """Fork the agent of one connection; its PID, or None (said on the connection) if the
    kernel refuses the fork. The server's signals are blocked across the fork: the child
    takes none of them with the server's handlers."""
    sys.stdout.flush()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SERVED_SIGNALS)
    try:
        pid = os.fork()
    except OSError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"event": "error", "message": f"the warm capture agent could not fork: {e}",
                                     "hint": "the node is short of processes or memory"}).encode() + b"\n")
        conn.close()
        return None
    if pid == 0:
        _serve_one(conn, listener, wake, old)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    conn.close()
    return pid


def _serve_one(conn: socket.socket, listener: socket.socket, wake: tuple[int, int], mask) -> None:
    """In the forked child: be a standby agent on this connection, then exit. What ends it
    otherwise than by the protocol (arguments it does not take: an agent older than the tracer
    asking; anything unforeseen) is said on the connection as an error event."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in SERVED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        listener.close()
        for fd in wake:
            os.close(fd)
        os.dup2(conn.fileno(), 0)
        os.dup2(conn.fileno(), 1)
        conn.close()
        try:
            code = main(["--run-id", "warm", "--argv-from-stdin"])
        except SystemExit as e:  # (argparse: arguments this agent does not take)
            code = e.code if isinstance(e.code, int) else 2
            if code:
                Output(sys.stdout.buffer).event(
                    "error", message="the warm capture agent does not take the arguments it was given",
                    hint="it may be older than this tracer: install its image anew (tracer agents install "
                         "--capture-image ...; the lab: tracer agents uninstall && tracer agents install)")
        except BaseException as e:  # noqa: BLE001 - said to the client, which has no other way to know
            import traceback

            traceback.print_exc()
            Output(sys.stdout.buffer).event("error", message=f"the warm capture agent failed: {e!r}",
                                            hint="its server's log (kubectl logs, or the lab's agent log) has the traceback")
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
    finally:
        os._exit(code)


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)


def _end_children(children: set[int]) -> None:
    """SIGTERM to each agent still running (it drains and sends its pcaps), SIGKILL after the
    grace time; all by the PIDs this server forked and has not reaped."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + SERVE_STOP_GRACE
    while children and time.monotonic() < end:
        _reap(children)
        time.sleep(0.02)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    children.clear()


def via(path: str, argv: list[str]) -> int:
    """The thin client: the agent's arguments to the server at `path`, then stdin to it and its
    answer to stdout, until the agent closes the connection."""
    out = Output(sys.stdout.buffer)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(argv).encode() + b"\n")
    except OSError as e:
        out.event("error", message=f"no warm capture agent answers at {path}: {e.strerror or e}",
                  hint="is the agent running? (tracer agents status; tracer agents install)")
        return 1
    poller = select.poll()
    poller.register(0, select.POLLIN | select.POLLHUP)
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP)
    while True:
        for fd, _ in poller.poll():
            if fd == 0:
                data = os.read(0, READ_CHUNK)
                if data:
                    with contextlib.suppress(OSError):  # (an agent that ended: its answer says why)
                        sock.sendall(data)
                else:  # EOF: the agent's stop, as for one run directly
                    poller.unregister(0)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
            else:
                try:
                    data = sock.recv(READ_CHUNK)
                except ConnectionResetError:  # (the agent ended with our "stop" unread: its end all the same)
                    return 0
                if not data:
                    return 0
                try:
                    _write_all(1, data)
                except OSError:  # nobody reads what it sends: end, the agent sees its EOF
                    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


READ_CHUNK = 1 << 16


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"] and len(argv) == 2:
        return serve(argv[1])
    if argv[:1] == ["--via"] and len(argv) >= 2:
        return via(argv[1], argv[2:])
    stdin_rest = b""
    out = Output(sys.stdout.buffer)
    if "--argv-from-stdin" in argv:  # the rest of the command line only names the run (ps)
        try:
            argv, stdin_rest = argv_from_stdin()
        except AgentError as e:  # (scapy missing: said before the arguments come)
            run_id = argv[argv.index("--run-id") + 1] if "--run-id" in argv[:-1] else ""
            out.event("error", message=e.message, hint=e.hint, run_id=run_id)
            return 1
        if argv is None:
            return 0
    args = parse_args(argv)
    agent = Agent(args, out)
    agent._stdin_buf = stdin_rest
    try:
        agent.watch_signals()
        agent.open()
        agent.run()
        agent.finish()
    except AgentError as e:
        out.event("error", message=e.message, hint=e.hint, run_id=args.run_id)
        return 1
    except OSError as e:
        out.event("error", message=f"capture failed: {e}", hint="", run_id=args.run_id)
        return 1
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    code = main()
    try:
        sys.stdout.flush()
    except OSError:
        pass
    os._exit(code)  # everything is written and closed: skip the interpreter's teardown
