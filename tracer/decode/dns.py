"""DNS messages (RFC 1035) in a UDP payload: the question, the answers and the response code, as
the views and the JSON name a cluster's lookups (`A? httpbin.default.svc.cluster.local`,
`A 10.152.183.50`, `NXDOMAIN`). Never raises: a payload that is no DNS message gives None, a
message cut short gives what could be read (`truncated`)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

DNS_PORTS = frozenset({53, 5353})
TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 65: "HTTPS", 255: "ANY"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_POINTERS = 16  # (compression pointers followed in one name: a loop ends there)


@dataclass(frozen=True, kw_only=True)
class DnsMessage:
    id: int
    response: bool
    rcode: int
    name: str
    """The (first) question's name, without the final dot."""
    type: str
    """Its type, e.g. `A`, `AAAA` (`TYPE<n>` for one without a name here)."""
    answers: tuple[str, ...] = ()
    """The answer section, each `TYPE data`, e.g. `A 10.152.183.50`, `CNAME x.example`."""
    truncated: bool = False
    """The message ended before its counts said (a capture's snap length, a cut frame)."""

    @property
    def rcode_name(self) -> str:
        return RCODES.get(self.rcode, f"RCODE{self.rcode}")

    def words(self, short: bool = False) -> str:
        """`DNS A? httpbin.default.svc.cluster.local`, `DNS A httpbin… = 10.152.183.50`, `DNS NXDOMAIN nosuch…`
        (`short`: for a grid's column, `.cluster.local` off the name and only the first answer)."""
        name = self.name or "."
        if short:  # (a cluster's search forms stay apart: httpbin.default.svc, httpbin.svc, httpbin)
            name = name.removesuffix(".cluster.local")
        if not self.response:
            return f"DNS {self.type}? {name}"
        if self.rcode:
            return f"DNS {self.rcode_name} {name}"
        got = [a.split(" ", 1)[1] for a in self.answers if a.startswith(self.type + " ")] or list(self.answers)
        if not got:
            return f"DNS {self.type} {name}: no answer"
        return f"DNS {self.type} {name} = {', '.join(got[:1] if short else got)}"


def parse(payload: bytes) -> DnsMessage | None:
    """The DNS message in a UDP payload, or None when it is none (fewer than 12 bytes, no question)."""
    if len(payload) < 12:
        return None
    ident, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", payload)
    if qd != 1 or flags & 0x7800:  # (one question, a standard query: what a resolver sends)
        return None
    name, at = _name(payload, 12)
    if name is None or at + 4 > len(payload):
        return None
    qtype = struct.unpack_from("!H", payload, at)[0]
    at += 4
    answers: list[str] = []
    truncated = False
    for _ in range(an):
        rec, at = _record(payload, at)
        if rec is None:
            truncated = True
            break
        answers.append(rec)
    return DnsMessage(id=ident, response=bool(flags & 0x8000), rcode=flags & 0x000F, name=name,
                      type=TYPES.get(qtype, f"TYPE{qtype}"), answers=tuple(answers), truncated=truncated)


def _name(buf: bytes, at: int) -> tuple[str | None, int]:
    """A (possibly compressed) name at `at`: the name and where what follows it begins."""
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        if at >= len(buf):
            return None, at
        n = buf[at]
        if n == 0:
            at += 1
            break
        if n & 0xC0 == 0xC0:
            if at + 2 > len(buf) or jumps >= MAX_POINTERS:
                return None, at
            end = at + 2 if end is None else end
            at = ((n & 0x3F) << 8) | buf[at + 1]
            jumps += 1
            continue
        if n & 0xC0 or at + 1 + n > len(buf):
            return None, at
        labels.append(buf[at + 1:at + 1 + n].decode("ascii", "replace"))
        at += 1 + n
    return ".".join(labels), end if end is not None else at


def _record(buf: bytes, at: int) -> tuple[str | None, int]:
    name, at = _name(buf, at)
    if name is None or at + 10 > len(buf):
        return None, at
    rtype, _, _, rdlen = struct.unpack_from("!HHIH", buf, at)
    at += 10
    if at + rdlen > len(buf):
        return None, at
    data = buf[at:at + rdlen]
    kind = TYPES.get(rtype, f"TYPE{rtype}")
    if rtype == 1 and rdlen == 4:
        text = str(ipaddress.IPv4Address(data))
    elif rtype == 28 and rdlen == 16:
        text = str(ipaddress.IPv6Address(data))
    elif rtype in (2, 5, 12):
        target, _ = _name(buf, at)
        text = target if target is not None else "?"
    else:
        text = f"{rdlen} bytes"
    return f"{kind} {text}", at + rdlen
