"""Repeated trials and comparisons, as pure functions: the majority vote over one item's
answers (an invalid answer is a vote of its own, never a class), the agreement rate, and the
item-by-item difference between two evaluations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Vote:
    winner: str | None  # None: invalid answers won (or tied for first with a class)
    agreement: float  # share of trials that gave the winning answer
    counts: dict[str, int]  # votes per class; invalid answers under "invalid"


def majority_vote(answers: Sequence[str | None], classes: Sequence[str]) -> Vote:
    """The most frequent answer. Ties go to the class listed first in the policy, but a tie
    with invalid answers is invalid: a vote must never turn a broken answer into a class."""
    if not answers:
        raise ValueError("no answers to vote on")
    counts = Counter("invalid" if a is None else a for a in answers)
    top = max(counts.values())
    if counts.get("invalid", 0) == top:
        winner = None
    else:
        winner = next(c for c in classes if counts.get(c, 0) == top)
    return Vote(winner, top / len(answers), dict(counts))


@dataclass(frozen=True)
class ItemChange:
    id: str
    label: str
    baseline: str | None
    current: str | None


@dataclass(frozen=True)
class Comparison:
    regressions: list[ItemChange]  # right in the baseline, wrong now
    fixes: list[ItemChange]  # wrong in the baseline, right now
    changed: list[ItemChange]  # wrong in both, with different answers
    only_in_baseline: list[str]
    only_in_current: list[str]
    accuracy_baseline: float  # over the items both hold
    accuracy_current: float


def compare(
    current: Mapping[str, tuple[str, str | None]], baseline: Mapping[str, tuple[str, str | None]]
) -> Comparison:
    """Both map item id → (label, prediction or None); items are matched by id. An item
    whose label differs between the two runs is compared with each run's own label."""
    regressions, fixes, changed = [], [], []
    shared = [item for item in current if item in baseline]
    for item in shared:
        label, now = current[item]
        old_label, before = baseline[item]
        change = ItemChange(item, label, before, now)
        right_before, right_now = before == old_label, now == label
        if right_before and not right_now:
            regressions.append(change)
        elif right_now and not right_before:
            fixes.append(change)
        elif not right_now and before != now:
            changed.append(change)
    n = len(shared)
    return Comparison(
        regressions=regressions,
        fixes=fixes,
        changed=changed,
        only_in_baseline=[i for i in baseline if i not in current],
        only_in_current=[i for i in current if i not in baseline],
        accuracy_baseline=sum(baseline[i][1] == baseline[i][0] for i in shared) / n if n else 0.0,
        accuracy_current=sum(current[i][1] == current[i][0] for i in shared) / n if n else 0.0,
    )
