"""`vlmserve eval`: predictions from an engine in this process or a server, metrics, files,
and on request a policy copy with the fitted temperature. Exit 1 when some request got no
answer (the metrics then count those as invalid, which says more about the run than the
model)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from vlmserve.safety.backends import BackendSettings, open_backend
from vlmserve.safety.evaluation.report import (
    comparison_lines,
    evaluate,
    load_baseline,
    write_outputs,
)
from vlmserve.safety.evaluation.runner import EvalSettings, load_dataset, predict
from vlmserve.safety.meta import load_average, report_meta
from vlmserve.safety.policy import Policy


async def run_eval(
    dataset: Path,
    policy: Policy,
    settings: EvalSettings,
    backend_settings: BackendSettings,
    default_model: Callable[[], Path],
    out: Path,
    baseline_path: str | None,
    fitted_policy_path: str | None,
) -> int:
    items = load_dataset(dataset, policy.class_names)
    baseline = load_baseline(baseline_path) if baseline_path else None
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_at_start = load_average()
    async with open_backend(backend_settings, policy, default_model) as backend:
        settings = dataclasses.replace(settings, model=backend.model)
        total = len(items) * settings.trials
        with tqdm(total=total, desc="eval", unit="req", file=sys.stderr) as bar:
            results = await predict(backend, items, policy, settings, on_answer=bar.update)
        where = backend.where
    evaluation = evaluate(results, policy, fit=fitted_policy_path is not None, baseline=baseline)
    meta = {
        **report_meta(settings.model, settings.seed, where),
        "dataset": str(dataset),
        "base_url": backend_settings.base_url,
        "started": started,
        "load at start": load_at_start,
        "load at end": load_average(),
    }
    write_outputs(out, evaluation, results, policy, settings, meta)
    m = evaluation.metrics
    print(
        f"eval: {m.n} items, accuracy {m.accuracy:.3f}, balanced {m.balanced_accuracy:.3f}, "
        f"macro F1 {m.macro_f1:.3f}, invalid {m.invalid}, any-issue FPR "
        f"{m.binary.false_positive_rate:.3f}; report: {out / 'report.md'}"
    )
    if evaluation.comparison is not None:
        print("\n".join(comparison_lines(evaluation.comparison)))
    if fitted_policy_path is not None:
        if evaluation.fitted_temperature is None:
            print(
                "vlmserve eval: no class scores to fit a temperature on (--api chat gives none)",
                file=sys.stderr,
            )
            return 2
        policy.with_temperature(evaluation.fitted_temperature).dump(fitted_policy_path)
        print(
            f"fitted temperature {evaluation.fitted_temperature:.4f} written to {fitted_policy_path}"
        )
    if evaluation.errors:
        print(f"vlmserve eval: {evaluation.errors} request(s) got no answer", file=sys.stderr)
        return 1
    return 0
