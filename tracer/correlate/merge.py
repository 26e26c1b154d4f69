"""The merge: batches of sightings from every capture file, in one stream by time.

Every file is read once, in order; the merge takes from each what comes before the horizon of
a round and sorts the round (a merge of sorted runs, which sorting does fast, and stable).
A sighting's time is its first field (o[0], T in tracer.capture.sightings), read by index here.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from itertools import islice
from operator import gt, itemgetter

TIE_HOLD = 65536
"""Sightings of one instant the merge holds back at most, per stream."""


class _Head:
    """Where the merge is in one stream: its batch at hand, the position in it, whether it ended."""

    __slots__ = ("batch", "pos", "stream", "ended")

    def __init__(self, batch: list[tuple], stream: Iterator[list[tuple]]):
        self.batch: list[tuple] | None = batch
        self.pos = 0
        self.stream = stream
        self.ended = False


def merge_batches(streams: list[Iterator[list[tuple]]], out_of_order: Callable[[], None]) -> Iterator[list[tuple]]:
    """Batches of sightings from every stream, merged by time, equal times in stream order (as
    heapq.merge would, whatever the batch sizes).

    The horizon of a round is the earliest of the streams' latest times at hand. A round takes,
    from every stream, what comes before it, and what comes at it too once no stream can bring
    more of that instant (else the streams whose batch ends there read on first). The round is
    sorted: a merge of sorted runs, which sorting does fast, and stable. If a stream is not in
    time order itself, what comes out may go back in time: `out_of_order` is called before the
    first batch that does.
    """
    heads: list[_Head] = []
    for s in streams:
        for b in s:
            if b:
                heads.append(_Head(b, s))
                break
    key = itemgetter(0)
    last = float("-inf")
    in_order = True
    while heads:
        horizon = min(h.batch[-1][0] for h in heads)
        # (bounded: a file whose frames all carry one time, as pcapng simple packet blocks do, is
        # not held whole; its ties then fall where the batches end)
        waiting = any(h.batch[-1][0] == horizon and not h.ended and len(h.batch) - h.pos < TIE_HOLD for h in heads)
        out: list[tuple] = []
        for h in heads:
            b, pos = h.batch, h.pos
            if waiting:
                end = bisect_left(b, horizon, lo=pos, key=key)
            elif b[-1][0] == horizon:
                end = len(b)  # an ended stream gives all it has left (progress even if out of order)
            else:
                end = bisect_right(b, horizon, lo=pos, key=key)
            if end > pos:
                out.extend(b[pos:end] if pos or end < len(b) else b)
                h.pos = end
        if out:
            if len(heads) > 1:
                out.sort(key=key)
            if in_order and (out[0][0] < last or len(heads) == 1 and any(map(gt, map(key, out), map(key, islice(out, 1, None))))):
                in_order = False
                out_of_order()
            last = out[-1][0]
            yield out
        for h in heads:
            if h.pos >= len(h.batch) or (waiting and h.batch[-1][0] == horizon and not h.ended
                                         and len(h.batch) - h.pos < TIE_HOLD):
                more = None if h.ended else next((b for b in h.stream if b), None)
                if more is None:
                    h.ended = True
                    if h.pos >= len(h.batch):
                        h.batch = None
                else:
                    h.batch, h.pos = (h.batch[h.pos:] + more if h.pos < len(h.batch) else more), 0
        heads = [h for h in heads if h.batch is not None]
