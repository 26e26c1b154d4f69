"""Latency per segment of the way: a bounded uniform sample per way, percentiles of their union.

Memory does not grow with the packet count: each way (tuple of steps) keeps RESERVOIR samples,
and a packet past the first ones costs a counter increment (Algorithm L).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

RESERVOIR = 4096
MANY_WAYS = 64
"""Past this many ways, each new way's sample is smaller (a way's sample holds a tuple a packet)."""


class Sampler:
    """A bounded uniform sample of the packets that went one way (one tuple of steps): each packet
    taken gives the latencies of all its steps at once, so a packet costs one counter, not one a
    step. Percentiles without memory growing with packet count (see LatencySamples.latency).

    Li's Algorithm L: once the sample is full, the number of packets to skip before the next one
    that goes in is drawn directly, so most packets cost a counter increment. The caller adds a
    packet as `n += 1; if n >= next: (append while below fill, else take)` (inlined in
    tracer.correlate.engine).
    """

    __slots__ = ("steps", "n", "items", "rng", "next", "w", "size", "fill")

    def __init__(self, steps: tuple[tuple[int, int], ...], rng: random.Random, size: int):
        self.steps = {seg: k for k, seg in enumerate(steps)}
        """(point, next point) -> its place in each item."""
        self.n = 0
        self.items: list[tuple[float, ...]] = []
        self.rng = rng
        self.next = 0
        self.w = 1.0
        self.size = size
        self.fill = size - 1  # below this the caller just appends

    def take(self, x: tuple[float, ...]) -> None:
        """Packet number n, when n >= next (the caller appends the first `fill` itself)."""
        rnd, k = self.rng.random, self.size
        if len(self.items) < k:  # the last free place: the sample is full from here on
            self.items.append(x)
            self.w = math.exp(math.log(1.0 - rnd()) / k)
        else:
            self.items[int(rnd() * k)] = x
            self.w *= math.exp(math.log(1.0 - rnd()) / k)
        w = min(self.w, 1.0 - 1e-12)
        self.next = self.n + int(math.log(1.0 - rnd()) / math.log(1.0 - w)) + 1


def percentiles(samples: list[tuple[list[float], float]], qs: Iterable[float]) -> list[float]:
    """Percentiles of the union of uniform samples, each (values, weight: packets each value
    stands for). `s[int(q * len(s))]` of the sorted values when the weights are equal."""
    if len({w for _, w in samples}) == 1:
        s = sorted(v for vals, _ in samples for v in vals)
        return [s[min(len(s) - 1, int(q * len(s)))] for q in qs]
    s = sorted((v, w) for vals, w in samples for v in vals)
    total = sum(w for _, w in s)
    out = []
    for q in qs:
        cum, want = 0.0, q * total
        for v, w in s:
            cum += w
            if cum > want:
                break
        out.append(v)
    return out


class LatencySamples:
    """Every way's sample, by its steps; the percentiles of a step over all ways that have it."""

    def __init__(self, seed: int = 4096):
        self.samplers: dict[tuple[tuple[int, int], ...], Sampler] = {}  # steps of a way -> its latency sample
        self.rng = random.Random(seed)

    def sampler(self, steps: tuple[tuple[int, int], ...]) -> Sampler:
        sm = self.samplers.get(steps)
        if sm is None:
            size = RESERVOIR if len(self.samplers) < MANY_WAYS else RESERVOIR // 16
            sm = self.samplers[steps] = Sampler(steps, self.rng, size)
        return sm

    def latency(self, seg: tuple[int, int], qs: Iterable[float]) -> list[float] | None:
        """Percentiles of the time from point a to point b (each on its own clock), from the
        samples of every way that has that step; None if no packet went that way."""
        samples = []
        for sm in self.samplers.values():
            k = sm.steps.get(seg)
            if k is not None and sm.items:
                samples.append(([it[k] for it in sm.items], sm.n / len(sm.items)))
        return percentiles(samples, qs) if samples else None
