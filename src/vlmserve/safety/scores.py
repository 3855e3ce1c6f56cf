"""Class scores as pure functions: the token path each class is scored on, the scores (the
paths' probabilities renormalised over the classes, with the policy's calibration
temperature), the class an answer gets, and which classes are flagged.

A class's path is the answer's start up to and including the closing quote of its name,
`{"best_class":"alcohol"`: the quote keeps a class whose name is a prefix of another's
(`no`, `no_issues`) from counting the longer one's mass. The shared `{"best_class":"` is a
common factor of every path's probability, so renormalising over the classes gives exactly
the probability of each class's path *after* that prefix, given that the answer names a
class.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from vlmserve.safety.policy import Policy

ANSWER_PREFIX = '{"best_class":"'


def class_paths(policy: Policy) -> list[str]:
    return [f'{ANSWER_PREFIX}{name}"' for name in policy.class_names]


def softmax(logprobs: Sequence[float], temperature: float = 1.0) -> list[float]:
    """softmax(log p / temperature); ValueError unless every log-probability is finite (a
    model that produced NaN or -inf gives no usable score, and none is invented)."""
    if not logprobs or not all(math.isfinite(lp) for lp in logprobs):
        raise ValueError(f"class log-probabilities are not all finite: {list(logprobs)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = [lp / temperature for lp in logprobs]
    top = max(scaled)
    weights = [math.exp(x - top) for x in scaled]
    total = math.fsum(weights)
    return [w / total for w in weights]


def class_scores(logprobs: Sequence[float], policy: Policy) -> list[float]:
    """The policy's class scores from each class path's log-probability."""
    return softmax(logprobs, policy.temperature)


def choose_class(logprobs: Sequence[float], temperature: float, seed: int | None) -> int:
    """The index of the class an answer gets. Greedy (temperature 0): the most probable path
    (the first in policy order on a tie), so `argmax(scores) == best_class`. Otherwise one
    drawn from softmax(log p / temperature) with `seed`, as sampling the path would."""
    if temperature == 0:
        best = max(logprobs)
        return next(i for i, lp in enumerate(logprobs) if lp == best)
    weights = softmax(logprobs, temperature)
    return random.Random(seed).choices(range(len(weights)), weights)[0]


def flagged_classes(policy: Policy, scores: Sequence[float]) -> dict[str, bool]:
    """Each class at or above its threshold; the default class is never flagged."""
    return {
        c.name: c.threshold is not None and score >= c.threshold
        for c, score in zip(policy.classes, scores, strict=True)
    }
