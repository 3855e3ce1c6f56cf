"""Classification metrics as pure functions of (true label, prediction) pairs.

A prediction of None is an invalid answer: it is its own column of the confusion matrix,
counts as wrong everywhere and is never mapped to a class. Conventions (zero divisions give
0; which classes enter the averages) are spelled out where they apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INVALID = "invalid"


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class BinaryScores:
    """The "any issue" view: positive = any class but the policy's default class.

    Invalid answers are counted apart (`invalid_positive`, `invalid_negative`): on a
    positive item one is a miss (recall counts it against), on a negative one it is not a
    false positive (FPR does not count it), and `precision` looks at valid answers only."""

    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int
    invalid_positive: int
    invalid_negative: int
    precision: float
    recall: float
    f1: float
    false_positive_rate: float
    accuracy: float


@dataclass(frozen=True)
class ClassificationReport:
    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true class; columns: classes + INVALID
    n: int
    invalid: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    micro_f1: float
    per_class: dict[str, ClassScores]
    binary: BinaryScores


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _f1(precision: float, recall: float) -> float:
    return _div(2 * precision * recall, precision + recall)


def confusion_matrix(
    labels: Sequence[str], predictions: Sequence[str | None], classes: Sequence[str]
) -> list[list[int]]:
    """Counts by (true class, predicted class or INVALID); the last column is INVALID."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    index = {name: i for i, name in enumerate(classes)}
    matrix = [[0] * (len(classes) + 1) for _ in classes]
    for label, prediction in zip(labels, predictions):
        if label not in index:
            raise ValueError(f"label {label!r} is not one of the classes {list(classes)}")
        if prediction is not None and prediction not in index:
            raise ValueError(f"prediction {prediction!r} is not a class; invalid ones are None")
        column = len(classes) if prediction is None else index[prediction]
        matrix[index[label]][column] += 1
    return matrix


def classify_report(
    labels: Sequence[str],
    predictions: Sequence[str | None],
    classes: Sequence[str],
    default_class: str,
) -> ClassificationReport:
    """Accuracy, balanced accuracy (mean recall over classes with support), per-class
    precision/recall/F1/support, macro F1 (mean over classes that occur as a label or a
    prediction, as scikit-learn does without `labels=`), micro F1 (pooled TP over valid
    predictions for precision and over all items for recall: equal to accuracy when no
    answer is invalid) and the binary view."""
    matrix = confusion_matrix(labels, predictions, classes)
    k = len(classes)
    n = len(labels)
    tp = [matrix[i][i] for i in range(k)]
    support = [sum(row) for row in matrix]
    predicted = [sum(matrix[r][c] for r in range(k)) for c in range(k)]
    per_class = {}
    for i, name in enumerate(classes):
        precision, recall = _div(tp[i], predicted[i]), _div(tp[i], support[i])
        per_class[name] = ClassScores(precision, recall, _f1(precision, recall), support[i])
    present = [i for i in range(k) if support[i] or predicted[i]]
    with_support = [i for i in range(k) if support[i]]
    micro_p, micro_r = _div(sum(tp), sum(predicted)), _div(sum(tp), n)
    return ClassificationReport(
        classes=tuple(classes),
        confusion=tuple(tuple(row) for row in matrix),
        n=n,
        invalid=sum(row[k] for row in matrix),
        accuracy=_div(sum(tp), n),
        balanced_accuracy=_div(
            sum(per_class[classes[i]].recall for i in with_support), len(with_support)
        ),
        macro_f1=_div(sum(per_class[classes[i]].f1 for i in present), len(present)),
        micro_f1=_f1(micro_p, micro_r),
        per_class=per_class,
        binary=binary_report(labels, predictions, default_class),
    )


def binary_report(
    labels: Sequence[str], predictions: Sequence[str | None], default_class: str
) -> BinaryScores:
    counts = dict.fromkeys(("tp", "fp", "tn", "fn", "inv_pos", "inv_neg"), 0)
    for label, prediction in zip(labels, predictions):
        positive = label != default_class
        if prediction is None:
            counts["inv_pos" if positive else "inv_neg"] += 1
        elif prediction != default_class:
            counts["tp" if positive else "fp"] += 1
        else:
            counts["fn" if positive else "tn"] += 1
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    positives = tp + fn + counts["inv_pos"]
    negatives = tn + fp + counts["inv_neg"]
    precision, recall = _div(tp, tp + fp), _div(tp, positives)
    return BinaryScores(
        true_positive=tp,
        false_positive=fp,
        true_negative=tn,
        false_negative=fn,
        invalid_positive=counts["inv_pos"],
        invalid_negative=counts["inv_neg"],
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        false_positive_rate=_div(fp, negatives),
        accuracy=_div(tp + tn, positives + negatives),
    )
