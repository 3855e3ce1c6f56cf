"""Metrics, calibration and trials against expectations computed by hand (in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlmserve.safety.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from vlmserve.safety.evaluation.metrics import classify_report, confusion_matrix
from vlmserve.safety.evaluation.trials import compare, majority_vote

CLASSES = ("a", "b", "c")  # c is the default class
LABELS = ["a", "a", "a", "b", "b", "c", "c", "c"]
PREDICTIONS = ["a", "a", "b", "b", None, "c", "a", "c"]  # None: an invalid answer


def test_confusion_has_an_invalid_column() -> None:
    assert confusion_matrix(LABELS, PREDICTIONS, CLASSES) == [
        [2, 1, 0, 0],
        [0, 1, 0, 1],
        [1, 0, 2, 0],
    ]
    with pytest.raises(ValueError, match="not a class"):
        confusion_matrix(["a"], ["drugs"], CLASSES)  # invalid answers are None, never a name
    with pytest.raises(ValueError, match="not one of the classes"):
        confusion_matrix(["z"], ["a"], CLASSES)


def test_multiclass_metrics() -> None:
    r = classify_report(LABELS, PREDICTIONS, CLASSES, "c")
    assert (r.n, r.invalid) == (8, 1)
    assert r.accuracy == pytest.approx(5 / 8)  # TP a2 b1 c2
    # precision = TP / predicted as the class; recall = TP / support (invalid counts against)
    a, b, c = r.per_class["a"], r.per_class["b"], r.per_class["c"]
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 3))
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((1 / 2, 1 / 2, 1 / 2, 2))
    assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((1, 2 / 3, 4 / 5, 3))
    assert r.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)  # 11/18
    assert r.macro_f1 == pytest.approx(59 / 90)  # (2/3 + 1/2 + 4/5) / 3
    # micro: P = 5 TP / 7 valid predictions, R = 5 / 8 items, F1 = 2PR/(P+R) = 2/3
    assert r.micro_f1 == pytest.approx(2 / 3)


def test_binary_any_issue_view() -> None:
    b = classify_report(LABELS, PREDICTIONS, CLASSES, "c").binary
    # positives (a, b): a a b b TP, one invalid; negatives (c): c c TN, a FP
    assert (b.true_positive, b.false_negative, b.invalid_positive) == (4, 0, 1)
    assert (b.true_negative, b.false_positive, b.invalid_negative) == (2, 1, 0)
    assert b.precision == pytest.approx(4 / 5) and b.recall == pytest.approx(4 / 5)
    assert b.false_positive_rate == pytest.approx(1 / 3)
    assert b.accuracy == pytest.approx(6 / 8) and b.f1 == pytest.approx(4 / 5)


def test_micro_f1_is_accuracy_without_invalid_answers() -> None:
    preds = ["a", "b", "b", "b", "c", "c", "a", "c"]
    r = classify_report(LABELS, preds, CLASSES, "c")
    assert r.micro_f1 == pytest.approx(r.accuracy)


PROBS = np.array([[0.72, 0.18, 0.10], [0.35, 0.55, 0.10], [0.93, 0.04, 0.03], [0.30, 0.25, 0.45]])
TRUTH = np.array([0, 0, 0, 2])  # top classes 0, 1, 0, 2: right, wrong, right, right


def test_calibration_metrics() -> None:
    # one item per bin: ECE = mean |correct - confidence| = (.28 + .55 + .07 + .55) / 4
    assert expected_calibration_error(PROBS, TRUTH) == pytest.approx(0.3625)
    # per item Σ(p - onehot)²: .1208, .735, .0074, .455
    assert brier_score(PROBS, TRUTH) == pytest.approx(1.3182 / 4)
    assert negative_log_likelihood(PROBS, TRUTH) == pytest.approx(
        -(math.log(0.72) + math.log(0.35) + math.log(0.93) + math.log(0.45)) / 4
    )
    report = calibration_report(PROBS, TRUTH)
    filled = [(round(b.lower, 6), b.count, b.accuracy) for b in report.bins if b.count]
    assert filled == [(0.4, 1, 1.0), (0.5, 1, 0.0), (0.7, 1, 1.0), (0.9, 1, 1.0)]
    with pytest.raises(ValueError, match="distribution"):
        brier_score(np.array([[0.5, 0.6, 0.0]]), np.array([0]))


def test_temperature() -> None:
    assert apply_temperature(PROBS, 1.0) == pytest.approx(PROBS)
    # softmax(log p / 2) for (.8, .2): √.8 / (√.8 + √.2) = 2/3
    assert apply_temperature(np.array([[0.8, 0.2]]), 2.0)[0] == pytest.approx([2 / 3, 1 / 3])
    # Three items scored (.8, .2), two of them class 0: NLL is lowest when the score is 2/3,
    # i.e. (.8/.2)^(1/T) = 2, T = 2.
    probs = np.array([[0.8, 0.2]] * 3)
    assert fit_temperature(probs, np.array([0, 0, 1])) == pytest.approx(2.0, rel=1e-6)


def test_majority_vote_never_turns_invalid_into_a_class() -> None:
    vote = majority_vote(["a", "a", None], CLASSES)
    assert (vote.winner, vote.agreement, vote.counts) == ("a", 2 / 3, {"a": 2, "invalid": 1})
    assert majority_vote(["a", None], CLASSES).winner is None  # a tie with invalid is invalid
    tie = majority_vote(["b", "a"], CLASSES)
    assert (tie.winner, tie.agreement) == ("a", 0.5)  # ties go to the policy's order


def test_compare_with_baseline() -> None:
    current = {"1": ("a", "a"), "2": ("a", "b"), "3": ("b", "b"), "4": ("b", None)}
    baseline = {"1": ("a", "b"), "2": ("a", "a"), "3": ("b", "b"), "4": ("b", "c"), "5": ("c", "c")}
    diff = compare(current, baseline)
    assert [c.id for c in diff.fixes] == ["1"] and [c.id for c in diff.regressions] == ["2"]
    assert [(c.id, c.baseline, c.current) for c in diff.changed] == [("4", "c", None)]
    assert (diff.only_in_baseline, diff.only_in_current) == (["5"], [])
    assert (diff.accuracy_baseline, diff.accuracy_current) == (0.5, 0.5)
