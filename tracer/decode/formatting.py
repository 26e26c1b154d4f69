"""Decoded fields as text, for display only (decoding itself keeps addresses as bytes).

Cached because the same few addresses repeat in every capture.
"""

from __future__ import annotations

from functools import lru_cache

TCP_FLAG_LETTERS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("A", 0x10), ("U", 0x20), ("E", 0x40), ("C", 0x80))


@lru_cache(maxsize=4096)
def fmt_mac(b: bytes | None) -> str | None:
    return None if b is None else ":".join(f"{x:02x}" for x in b)


@lru_cache(maxsize=8192)
def fmt_ip(b: bytes | None) -> str | None:
    if b is None:
        return None
    if len(b) == 4:
        return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"
    import ipaddress
    return str(ipaddress.IPv6Address(b))


def tcp_flags_str(flags: int | None) -> str:
    if flags is None:
        return ""
    return "".join(letter for letter, bit in TCP_FLAG_LETTERS if flags & bit)
