"""The budgets (how many models, how many measured bytes) and the choice of an eviction
victim. Pure functions of the entries: the lifecycle decides when to ask."""

from __future__ import annotations

import time
from collections.abc import Iterable

from vlmserve.config import RegistryConfig
from vlmserve.registry.entry import Entry, ModelState

MIB = 1024 * 1024


def shortfall(entry: Entry, entries: Iterable[Entry], config: RegistryConfig) -> str | None:
    """Why `entry` cannot load now without evicting another model, or None if it fits. A
    load counts as one more model; its memory is the footprint measured at its last load
    (unknown for a first load: the budget is then enforced once it is measured)."""
    others = [e for e in entries if e is not entry and e.occupies]
    limit = config.max_loaded_models
    if limit is not None and len(others) + 1 > limit:
        return f"{len(others)} of --max-loaded-models {limit} loaded"
    budget = config.memory_budget_bytes
    if budget is not None:
        used = sum(e.memory_bytes() for e in others) + entry.memory_bytes()
        need = entry.stored.memory_bytes or 0
        if used + need > budget:
            return (
                f"{used / MIB:.0f} MiB of the --memory-budget {budget / MIB:.0f} MiB in use, "
                f"{need / MIB:.0f} MiB needed"
            )
    return None


def over_budget(entries: Iterable[Entry], config: RegistryConfig) -> int:
    """Bytes by which the measured footprints exceed the memory budget (0 if within)."""
    if config.memory_budget_bytes is None:
        return 0
    return max(0, sum(e.memory_bytes() for e in entries) - config.memory_budget_bytes)


def choose_victim(
    entries: Iterable[Entry], config: RegistryConfig, exclude: Entry | None = None
) -> Entry | None:
    """The loaded model to evict: unpinned, loaded at least --min-resident ago, not in the
    middle of a switch. Idle ones first, and among them the cheapest to bring back for the
    time it has been unused: the lowest measured load seconds / idle seconds. A busy model
    is a victim only when no idle one is left (it then drains before it goes).

    A ready model with requests still counted as waiting is never a victim: they were woken
    by its load and are admitted on their next turn. Evicting it first let two models evict
    each other before either served anyone (102 evictions for 3 requests with
    --max-loaded-models 1); once admitted they are in flight, so the model drains instead."""
    now = time.monotonic()
    candidates = [
        e
        for e in entries
        if e is not exclude
        and e.state is ModelState.READY
        and e.current is not None
        and not e.pinned
        and not e.replacing
        and not e.waiting
        and now - e.current.loaded_mono >= config.min_resident
    ]

    def cost(e: Entry) -> tuple[bool, float, float]:
        assert e.current is not None
        idle = e.idle_seconds(now)
        return bool(e.in_flight), e.current.load_seconds / max(idle, 1e-3), e.last_used

    return min(candidates, key=cost, default=None)
