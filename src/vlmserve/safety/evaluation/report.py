"""What `vlmserve eval` concludes and writes: metrics over the majority votes, calibration
over the class scores (as served, with the policy's temperature; a fitted one on request), the
comparison with a baseline, then `eval.json` (versioned), `confusion.csv`, `confusion.png`,
`reliability.png` and `report.md`."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmserve.safety.evaluation.calibration import (
    CalibrationReport,
    apply_temperature,
    calibration_report,
    fit_temperature,
)
from vlmserve.safety.evaluation.metrics import INVALID, ClassificationReport, classify_report
from vlmserve.safety.evaluation.plots import plot_confusion, plot_reliability
from vlmserve.safety.evaluation.runner import EvalSettings, ItemResult
from vlmserve.safety.evaluation.trials import Comparison, compare
from vlmserve.safety.policy import Policy

FORMAT = "vlmserve-eval"
VERSION = 1


@dataclass(frozen=True)
class Evaluation:
    metrics: ClassificationReport
    calibration: CalibrationReport | None  # None: no item has class scores
    scored_items: int
    fitted_temperature: float | None
    calibration_fitted: CalibrationReport | None
    comparison: Comparison | None
    errors: int  # requests that got no answer
    mean_agreement: float


def evaluate(
    results: list[ItemResult],
    policy: Policy,
    fit: bool = False,
    baseline: dict[str, tuple[str, str | None]] | None = None,
) -> Evaluation:
    labels = [r.item.label for r in results]
    predictions = [r.vote.winner for r in results]
    metrics = classify_report(labels, predictions, policy.class_names, policy.default_class)
    scored = [r for r in results if r.scores is not None]
    calibration = fitted = None
    temperature = None
    if scored:
        probs = np.asarray([r.scores for r in scored], dtype=np.float64)
        truth = np.asarray([policy.class_names.index(r.item.label) for r in scored])
        calibration = calibration_report(probs, truth)
        if fit:
            # Scores carry the policy's temperature T: softmax(T · log s) undoes it, and the
            # fit starts from the model's own probabilities.
            raw = apply_temperature(probs, 1 / policy.temperature)
            temperature = fit_temperature(raw, truth)
            fitted = calibration_report(apply_temperature(raw, temperature), truth)
    current = {r.item.id: (r.item.label, r.vote.winner) for r in results}
    return Evaluation(
        metrics=metrics,
        calibration=calibration,
        scored_items=len(scored),
        fitted_temperature=temperature,
        calibration_fitted=fitted,
        comparison=compare(current, baseline) if baseline is not None else None,
        errors=sum(a.error for r in results for a in r.answers),
        mean_agreement=sum(r.vote.agreement for r in results) / len(results),
    )


def load_baseline(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """Item id → (label, prediction) from an earlier run's eval.json."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--vs {path}: cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"--vs {path}: not an eval.json written by `vlmserve eval`")
    if data.get("version") != VERSION:
        raise ValueError(
            f"--vs {path}: eval.json version {data.get('version')}, expected {VERSION}"
        )
    return {item["id"]: (item["label"], item["prediction"]) for item in data["items"]}


def write_outputs(
    out: Path,
    evaluation: Evaluation,
    results: list[ItemResult],
    policy: Policy,
    settings: EvalSettings,
    meta: dict[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    classes = list(policy.class_names)
    with (out / "confusion.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classes, INVALID])
        for name, row in zip(classes, evaluation.metrics.confusion):
            writer.writerow([name, *row])
    plot_confusion(evaluation.metrics, out / "confusion.png")
    if evaluation.calibration is not None:
        plot_reliability(
            evaluation.calibration, evaluation.calibration_fitted, out / "reliability.png"
        )
    document = {
        "format": FORMAT,
        "version": VERSION,
        **meta,
        "policy": {"name": policy.name, "hash": policy.hash, "source": policy.source},
        "settings": dataclasses.asdict(settings),
        "summary": _summary(evaluation),
        "items": [_item(r) for r in results],
    }
    (out / "eval.json").write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(evaluation, policy, settings, meta))


def _summary(evaluation: Evaluation) -> dict[str, Any]:
    summary = dataclasses.asdict(evaluation)
    summary["metrics"]["confusion"] = [list(row) for row in evaluation.metrics.confusion]
    return summary


def _item(result: ItemResult) -> dict[str, Any]:
    return {
        "id": result.item.id,
        "image": result.item.image,
        "label": result.item.label,
        "prediction": result.vote.winner,
        "agreement": result.vote.agreement,
        "votes": result.vote.counts,
        "scores": result.scores,
        "answers": [dataclasses.asdict(a) for a in result.answers],
    }


def markdown(
    evaluation: Evaluation, policy: Policy, settings: EvalSettings, meta: dict[str, Any]
) -> str:
    m = evaluation.metrics
    lines = [
        f"# eval: {meta.get('dataset')}",
        "",
        f"Model `{settings.model}` at {meta.get('server')}, policy `{policy.name}` "
        f"({policy.hash[:16]}), {settings.trials} trial(s) per item at temperature "
        f"{settings.temperature}, seed {settings.seed}.",
        "",
        f"- items: {m.n}; invalid answers (majority): {m.invalid}; failed requests: {evaluation.errors}",
        f"- accuracy {m.accuracy:.3f}, balanced accuracy {m.balanced_accuracy:.3f}, "
        f"macro F1 {m.macro_f1:.3f}, micro F1 {m.micro_f1:.3f}",
        f"- any issue: precision {m.binary.precision:.3f}, recall {m.binary.recall:.3f}, "
        f"FPR {m.binary.false_positive_rate:.3f}",
        f"- mean agreement between trials: {evaluation.mean_agreement:.3f}",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | {s.support} |"
        for name, s in m.per_class.items()
    ]
    lines += ["", "Confusion matrix: `confusion.csv`, `confusion.png`.", ""]
    if evaluation.calibration is None:
        lines.append(
            "Calibration: no class scores (`--api chat` gives none; use the in-process engine "
            "or `--api moderations`)."
        )
    else:
        c = evaluation.calibration
        lines.append(
            f"Calibration over {evaluation.scored_items} items (class scores, policy "
            f"temperature {policy.temperature}): ECE {c.ece:.4f}, Brier {c.brier:.4f}, "
            f"NLL {c.nll:.4f}; "
            "`reliability.png`."
        )
        if evaluation.fitted_temperature is not None and evaluation.calibration_fitted:
            f = evaluation.calibration_fitted
            lines.append(
                f"Fitted temperature {evaluation.fitted_temperature:.4f}: ECE {f.ece:.4f}, "
                f"Brier {f.brier:.4f}, NLL {f.nll:.4f}."
            )
    if evaluation.comparison is not None:
        lines += ["", *comparison_lines(evaluation.comparison)]
    return "\n".join(lines) + "\n"


def comparison_lines(comparison: Comparison) -> list[str]:
    lines = [
        f"Against the baseline: accuracy {comparison.accuracy_baseline:.3f} → "
        f"{comparison.accuracy_current:.3f}; {len(comparison.regressions)} regression(s), "
        f"{len(comparison.fixes)} fix(es).",
    ]
    for title, changes in (("regression", comparison.regressions), ("fix", comparison.fixes)):
        lines += [
            f"- {title}: {c.id} (label {c.label}): {c.baseline or INVALID} → {c.current or INVALID}"
            for c in changes
        ]
    return lines
