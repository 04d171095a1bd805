"""Log-prob bookkeeping for frozen models: a memo of prompt-token log-probs, and length buckets.

When the target prefills ``context + probe`` to answer it, the prefill's logits at the probe's
positions already give log p_target(probe | context). `LogprobMemo` keeps them, keyed by the
joined text and checked against the exact token ids a fresh log-prob call would build, so a
memo hit is the value a fresh forward computes (up to float summation order). Frozen weights
never change, so entries stay valid; the memo is a bounded LRU.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

import torch

MEMO_CAPACITY = 4096
"""Entries a memo keeps: a few experiences' worth of turns (an experience of 8 episodes, width 2,
depth 3 records 112)."""


class LogprobMemo:
    """Per-token log-probs of the last tokens of prompts a frozen model has prefilled (an LRU).

    >>> memo = LogprobMemo()
    >>> memo.record("ab", [5, 6, 7], torch.tensor([-1.0, -2.0]))
    >>> memo.lookup("ab", [5, 6, 7], 1), memo.lookup("ab", [5, 6, 8], 1)
    (-2.0, None)
    """

    def __init__(self, capacity: int = MEMO_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[bytes, list[float]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (the hit and miss counts stay)."""
        self._entries.clear()

    def record(self, key: str, row: Sequence[int], tail: torch.Tensor) -> None:
        """Remember that prompt `row` (ids, as the model saw them) was the text `key`, and the
        log-probs `tail` of its last ``len(tail)`` tokens."""
        self._entries[key] = (_packed(row), [float(value) for value in tail.tolist()])
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def lookup(self, key: str, row: Sequence[int], count: int, skip: int = 0) -> float | None:
        """The summed log-prob of `count` tokens of `row` that end `skip` tokens before its end
        (a chat template's closing tokens), if `key` was recorded with exactly these ids and
        enough tail log-probs; otherwise None."""
        entry = self._entries.get(key)
        if entry is None or count + skip > len(entry[1]) or entry[0] != _packed(row):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        tail = entry[1]
        end = len(tail) - skip
        return float(sum(tail[end - count : end])) if count else 0.0


def _packed(row: Sequence[int]) -> bytes:
    # Token ids as machine integers: a tenth of a tuple's memory, compared as exactly.
    return array("q", row).tobytes()


def length_buckets(lengths: Sequence[int], max_waste: float = 0.1, min_size: int = 4) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding stays small.

    Rows are sorted by length; a batch closes when padding it to its longest row would waste
    more than `max_waste` of its positions, unless it holds fewer than `min_size` rows (tiny
    batches cost more in per-call overhead than padding does).

    >>> length_buckets([30, 100, 31, 98], min_size=1)
    [[0, 2], [3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index in order:
        length = lengths[index]
        if current and len(current) >= min_size:
            waste = length * (len(current) + 1) - (total + length)
            if waste > max_waste * length * (len(current) + 1):
                buckets.append(current)
                current, total = [], 0
        current.append(index)
        total += length
    if current:
        buckets.append(current)
    return buckets
