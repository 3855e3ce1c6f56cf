"""`vlmserve eval`: predictions from a server, metrics, files, and on request a policy copy
with the fitted temperature. Exit 1 when some request got no answer (the metrics then count
those as invalid, which says more about the run than the model)."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from vlmserve.safety.client import first_model, http_client
from vlmserve.safety.evaluation.report import (
    comparison_lines,
    evaluate,
    load_baseline,
    write_outputs,
)
from vlmserve.safety.evaluation.runner import EvalSettings, load_dataset, predict
from vlmserve.safety.meta import report_meta, server_facts
from vlmserve.safety.policy import Policy


async def run_eval(
    dataset: Path,
    base_url: str,
    api_key: str | None,
    timeout: float,
    model: str | None,
    policy: Policy,
    settings: EvalSettings,
    out: Path,
    baseline_path: str | None,
    fitted_policy_path: str | None,
) -> int:
    items = load_dataset(dataset, policy.class_names)
    baseline = load_baseline(baseline_path) if baseline_path else None
    started = datetime.now(UTC).isoformat(timespec="seconds")
    async with http_client(base_url, api_key, timeout, settings.concurrency) as client:
        settings = dataclasses.replace(settings, model=model or await first_model(client))
        server = await server_facts(client)
        total = len(items) * settings.trials
        with tqdm(total=total, desc="eval", unit="req", file=sys.stderr) as bar:
            results = await predict(client, items, policy, settings, on_answer=bar.update)
    evaluation = evaluate(results, policy, fit=fitted_policy_path is not None, baseline=baseline)
    meta = {
        **report_meta(base_url, settings.model, settings.seed, server),
        "dataset": str(dataset),
        "base_url": base_url,
        "started": started,
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
                "vlmserve eval: no class scores to fit a temperature on (use --trials above 1)",
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
