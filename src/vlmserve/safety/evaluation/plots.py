"""The eval figures: the confusion matrix (invalid answers as their own column) and the
reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmserve.safety.evaluation.calibration import CalibrationReport
from vlmserve.safety.evaluation.metrics import INVALID, ClassificationReport
from vlmserve.safety.plotting import new_figure, save


def plot_confusion(report: ClassificationReport, path: Path) -> None:
    matrix = np.asarray(report.confusion)
    columns = [*report.classes, INVALID]
    figure = new_figure(1.2 + 0.9 * len(columns), 1.0 + 0.7 * len(report.classes))
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(report.classes)), report.classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    top = matrix.max() or 1
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if count > top / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour)
    axes.set_title(f"confusion ({report.n} items, {report.invalid} invalid)")
    save(figure, path)


def plot_reliability(
    report: CalibrationReport, fitted: CalibrationReport | None, path: Path
) -> None:
    figure = new_figure(5.0, 5.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for name, rep in (("as scored", report), ("fitted temperature", fitted)):
        if rep is None:
            continue
        shown = [b for b in rep.bins if b.count]
        axes.plot(
            [b.confidence for b in shown],
            [b.accuracy for b in shown],
            marker="o",
            label=f"{name} (ECE {rep.ece:.3f})",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top class score)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability ({report.n} items)")
    axes.legend(loc="upper left")
    save(figure, path)
