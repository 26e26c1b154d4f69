"""Per-segment latency (summary): the median and p99 of the time between consecutive points.

Checked against the packets' own hops in the full JSON of the same capture (the `offset` of
each hop, clock offsets corrected), and the sampling on its own: uniform, and the union of
several ways' samples weighted by the packets each stands for.
"""

from __future__ import annotations

import random

import pytest

from factories import SAMPLES, SCENARIOS, analyze_json
from tracer.correlate.latency import Sampler, percentiles


def feed(sm: Sampler, values) -> None:
    """What the engine's _finalize_all does for each packet of the sampler's way."""
    for v in values:
        sm.n += 1
        if sm.n >= sm.next:
            if len(sm.items) < sm.fill:
                sm.items.append(v)
            else:
                sm.take(v)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_summary_latency_is_that_of_the_hops(capsys, scenario):
    full = analyze_json(capsys, str(SAMPLES / scenario))
    summary = analyze_json(capsys, str(SAMPLES / scenario), "--summary")
    per_seg: dict[tuple[str, str], list[float]] = {}
    for f in full["flows"]:
        for p in f["packets"]:
            for a, b in zip(p["hops"], p["hops"][1:]):
                per_seg.setdefault((a["point"], b["point"]), []).append(b["offset"] - a["offset"])
    checked = 0
    for s in summary["summary"]["segments"]:
        if s["latency_median"] is None:
            continue
        vals = sorted(per_seg[(s["src"], s["dst"])])
        assert s["latency_median"] == pytest.approx(vals[int(0.5 * len(vals))], abs=2e-9)
        assert s["latency_p99"] == pytest.approx(vals[min(len(vals) - 1, int(0.99 * len(vals)))], abs=2e-9)
        checked += 1
    # every step a packet completed has a latency (vxlan-drop: its two SYNs stop after four,
    # policy-drop's after one)
    assert checked == len(per_seg) >= (1 if scenario == "policy-drop" else 4)


def test_sample_is_uniform_past_its_size():
    sm = Sampler(((0, 1),), random.Random(1), 256)
    feed(sm, ((float(i),) for i in range(100_000)))
    assert sm.n == 100_000 and len(sm.items) == 256
    vals = sorted(v for (v,) in sm.items)
    # a sample that kept the first values (or the last) would be far off; a uniform one of 256
    # has its median within a few thousand of 50,000 and spans nearly the whole range
    assert 40_000 < percentiles([(vals, sm.n / 256)], (0.5,))[0] < 60_000
    assert vals[0] < 2_000 and vals[-1] > 98_000


def test_union_of_ways_is_weighted_by_their_packets():
    # way A: 100,000 packets of latency 1 ms, sampled down to 64; way B: 50 packets of 9 ms, all kept
    a = Sampler(((0, 1), (1, 2)), random.Random(2), 64)
    b = Sampler(((0, 1),), random.Random(3), 64)
    feed(a, ((0.001, 0.5),) * 100_000)
    feed(b, ((0.009,),) * 50)
    samples = [([it[a.steps[(0, 1)]] for it in a.items], a.n / len(a.items)), ([it[0] for it in b.items], 1.0)]
    median, p99, top = percentiles(samples, (0.5, 0.99, 0.9999))
    assert median == p99 == 0.001  # 50 of 100,050: not 1% (unweighted, 50 of 114 would be)
    assert top == 0.009
    # equal weights: exactly the sorted sample's value at int(q * n)
    assert percentiles([([3.0, 1.0], 1.0), ([2.0, 4.0], 1.0)], (0.5, 0.99)) == [3.0, 4.0]
