"""Grammar work remembered across requests, keyed by exactly what decides it: the closer's
searches and the masks of states that requests reach again and again.

A search for a short valid completion (closer.shortest_completion) is a deterministic
function of the grammar, the bytes the request's output holds so far, the nesting scanned
from them and the node budget: the same key is the same matcher state, so the same answer.
Requests with one schema meet the same states again and again (`{"best_class":"no`, the
start of each string), and in a batch-32 round of the content-safety benchmark 57 of 107
searches repeated a key an earlier request had searched (measured). Only completions found
are kept (a search that gave up is tried again), in a bounded table shared by every engine
thread of the process.

A mask is a deterministic function of the grammar, the vocabulary and the tokens accepted so
far. At a 152k vocabulary one costs ~0.3 ms to fill, and requests with one schema fill the
same ones at every step that follows the same tokens: `{"best_class` (where only `":"`
may follow), the enum's start, `","explanation` after each class. Those are kept too,
keyed by the tokens, only while the output is short (later states rarely repeat).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

import numpy as np

# Outputs longer than this are not remembered: their states rarely repeat, and the keys
# would hold the memory.
MAX_KEY_BYTES = 4096
# Masks are remembered for outputs of at most this many tokens.
MAX_MASK_KEY_TOKENS = 64

V = TypeVar("V")


class Memo(Generic[V]):
    """A bounded table, least recently used first out, safe across threads."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._found: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            found = self._found.get(key)
            if found is not None:
                self._found.move_to_end(key)
            return found

    def put(self, key: Hashable, found: V) -> None:
        with self._lock:
            self._found[key] = found
            self._found.move_to_end(key)
            while len(self._found) > self.capacity:
                self._found.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._found.clear()

    def __len__(self) -> int:
        return len(self._found)


SEARCHES: Memo[bytes] = Memo()
# ~19 KB a mask at a 152k vocabulary: ~10 MB when full.
MASKS: Memo[np.ndarray] = Memo(capacity=512)


def output_key(log: list[int]) -> bytes | None:
    """The bytes of an output as a key; None when it is too long to remember or holds the
    end-of-sequence marker (then no search follows anyway)."""
    if len(log) > MAX_KEY_BYTES:
        return None
    try:
        return bytes(log)
    except ValueError:  # BYTE_EOS (256): the grammar is complete
        return None
