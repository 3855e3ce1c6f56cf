"""The bench's conclusions and files: a summary per phase run (success and valid rates,
req/s, latency percentiles, TTFT, valid goodput), the verdict on the constrained arm, and
`results.json` (versioned, one record per request) plus `report.md`."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmserve.safety.bench.runner import MODES, BenchConfig, PhaseRun, Record

FORMAT = "vlmserve-bench"
VERSION = 1
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Summary:
    phase: str
    mode: str
    concurrency: int
    requests: int
    answered: int  # HTTP 200 with a chat completion
    valid: int  # strict JSON, schema-valid, as received
    success_rate: float
    valid_rate: float
    req_per_s: float
    latency_ms: dict[str, float | None]  # p50 p90 p95 p99 over answered requests
    ttft_ms: dict[str, float | None]  # the same over streamed answers (empty: not streamed)
    valid_goodput: float  # valid answers within the SLO, per second of the phase
    mean_completion_tokens: float | None
    fenced: int
    recoverable: int
    extra_fields: int
    missing_fields: int
    cut_by_length: int  # finish_reason "length"


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in PERCENTILES}
    points = np.percentile(np.asarray(values) * 1000, PERCENTILES)
    return {f"p{q}": round(float(v), 2) for q, v in zip(PERCENTILES, points)}


def summarize(run: PhaseRun, slo_ms: float) -> Summary:
    records = run.records
    answered = [r for r in records if r.error is None]
    valid = [r for r in answered if r.valid]
    ttfts = [r.ttft_s for r in answered if r.ttft_s is not None]
    tokens = [r.completion_tokens for r in answered if r.completion_tokens is not None]
    n, wall = len(records), max(run.wall_s, 1e-9)
    return Summary(
        phase=run.phase,
        mode=run.mode,
        concurrency=run.concurrency,
        requests=n,
        answered=len(answered),
        valid=len(valid),
        success_rate=len(answered) / n if n else 0.0,
        valid_rate=len(valid) / n if n else 0.0,
        req_per_s=n / wall,
        latency_ms=_percentiles([r.latency_s for r in answered]),
        ttft_ms=_percentiles(ttfts) if ttfts else {},
        valid_goodput=sum(r.latency_s * 1000 <= slo_ms for r in valid) / wall,
        mean_completion_tokens=sum(tokens) / len(tokens) if tokens else None,
        fenced=sum(r.fenced for r in answered),
        recoverable=sum(r.recoverable for r in answered),
        extra_fields=sum(bool(r.extra_fields) for r in answered),
        missing_fields=sum(bool(r.missing_fields) for r in answered),
        cut_by_length=sum(r.finish_reason == "length" for r in answered),
    )


def unenforced(runs: list[PhaseRun]) -> list[Record]:
    """Constrained requests that got an answer which is not valid: the server did not
    enforce `response_format`."""
    return [
        r
        for run in runs
        for r in run.records
        if r.mode == "constrained" and r.error is None and not r.valid
    ]


def failed(runs: list[PhaseRun]) -> list[Record]:
    return [r for run in runs for r in run.records if r.error is not None]


def write_results(
    path: Path,
    runs: list[PhaseRun],
    summaries: list[Summary],
    config: BenchConfig,
    meta: dict[str, Any],
    verdict: dict[str, int],
) -> None:
    document = {
        "format": FORMAT,
        "version": VERSION,
        "meta": meta,
        "verdict": verdict,
        "config": dataclasses.asdict(config),
        "summary": [dataclasses.asdict(s) for s in summaries],
        "records": [dataclasses.asdict(r) for run in runs for r in run.records],
    }
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def per_case(runs: list[PhaseRun]) -> dict[str, dict[str, list[Record]]]:
    """case → mode → its answered and failed records, over every phase."""
    table: dict[str, dict[str, list[Record]]] = defaultdict(lambda: {m: [] for m in MODES})
    for run in runs:
        for record in run.records:
            table[record.case][record.mode].append(record)
    return table


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown(
    runs: list[PhaseRun],
    summaries: list[Summary],
    config: BenchConfig,
    meta: dict[str, Any],
    plots: list[str],
    verdict: dict[str, int],
) -> str:
    bad, errors = unenforced(runs), failed(runs)
    constrained = sum(1 for run in runs for r in run.records if r.mode == "constrained")
    lines = [
        f"# vlmserve bench: {config.model}",
        "",
        *[f"- {key}: {value}" for key, value in meta.items()],
        "",
        "## Verdict",
        "",
    ]
    if bad:
        lines.append(
            f"**The server did not enforce `response_format`**: {len(bad)} of {constrained} "
            f"constrained answers are invalid (first: case `{bad[0].case}`: {bad[0].problem})."
        )
    else:
        lines.append(
            f"Constrained arm: every answer of {constrained} requests is valid (JSON, schema, enum)."
        )
    if errors:
        lines.append(f"{len(errors)} request(s) got no answer (first: {errors[0].error}).")
    lines.append(f"`vlmserve bench` exit status: {verdict['exit_status']}.")
    streamed = "TTFT p50/p95 ms | " if config.stream else ""
    lines += [
        "",
        "## Phases",
        "",
        f"Valid goodput counts schema-valid answers within {config.slo_ms:.0f} ms per second.",
        "",
        f"| phase | mode | conc. | requests | success | valid | req/s | p50 / p90 / p95 / p99 ms | {streamed}goodput/s | tokens | fenced | recoverable |",
        "|---|---|---|---|---|---|---|---|"
        + ("---|" if config.stream else "")
        + "---|---|---|---|",
    ]
    for s in summaries:
        lat = " / ".join(_ms(s.latency_ms[f"p{q}"]) for q in PERCENTILES)
        ttft = (
            f"{_ms(s.ttft_ms.get('p50'))} / {_ms(s.ttft_ms.get('p95'))} | " if config.stream else ""
        )
        tokens = "–" if s.mean_completion_tokens is None else f"{s.mean_completion_tokens:.1f}"
        lines.append(
            f"| {s.phase} | {s.mode} | {s.concurrency} | {s.requests} | {s.success_rate:.0%} | "
            f"{s.valid_rate:.0%} | {s.req_per_s:.2f} | {lat} | {ttft}{s.valid_goodput:.2f} | {tokens} | "
            f"{s.fenced} | {s.recoverable} |"
        )
    lines += [
        "",
        "## Validity per case (all phases)",
        "",
        "| case | label | unconstrained valid | constrained valid | unconstrained problems "
        "| constrained problems |",
        "|---|---|---|---|---|---|",
    ]
    for case, modes in per_case(runs).items():
        cells = []
        for mode in MODES:
            records = modes[mode]
            cells.append(f"{sum(r.valid for r in records)}/{len(records)}")
        flags = [_flags(modes[mode]) for mode in MODES]
        label = (modes["unconstrained"] or modes["constrained"])[0].label
        lines.append(f"| {case} | {label} | {cells[0]} | {cells[1]} | {flags[0]} | {flags[1]} |")
    lines += ["", "## Plots", "", *[f"![{name}]({name})" for name in plots], ""]
    return "\n".join(lines)


def _flags(records: list[Record]) -> str:
    """What was wrong with the invalid answers among `records` (a valid answer that was, say,
    closed at max_tokens is not a problem)."""
    records = [r for r in records if not r.valid]
    counts = {
        "fenced": sum(r.fenced for r in records),
        "recoverable": sum(r.recoverable for r in records),
        "extra fields": sum(bool(r.extra_fields) for r in records),
        "missing fields": sum(bool(r.missing_fields) for r in records),
        "unknown class": sum(r.best_class is not None and not r.enum_ok for r in records),
        "not JSON": sum(r.error is None and not r.json_ok for r in records),
        "raw control characters": sum(r.error is None and r.control_chars for r in records),
        "cut by length": sum(r.finish_reason == "length" for r in records),
    }
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "–"
