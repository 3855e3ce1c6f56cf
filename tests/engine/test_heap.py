"""engine/heap.py: what survives a full collection is frozen (out of every later full walk),
and what is garbage at the time of a call is collected, frozen or not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from vlmserve.engine.heap import freeze_long_lived


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def is_frozen(obj: object) -> bool:
    """Tracked, yet in none of the three collected generations: the permanent one."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's heap goes back to being collected


def test_what_lives_on_is_frozen_and_later_objects_are_not() -> None:
    kept = Node()
    freeze_long_lived()
    assert gc.get_freeze_count() > 0 and is_frozen(kept)
    assert not is_frozen(Node())


def test_a_cycle_that_became_garbage_after_a_freeze_is_collected_by_the_next_call() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # reachable only through each other once the names go
    probe = weakref.ref(a)
    freeze_long_lived()
    assert is_frozen(a)
    del a, b
    gc.collect()
    assert probe() is not None  # frozen: a plain collection never looks at it
    freeze_long_lived()
    assert probe() is None
