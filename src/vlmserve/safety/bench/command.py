"""`vlmserve bench`: run the phases against a server, write the report, and say whether the
server enforced `response_format` (exit 1 if not, 3 if requests got no answer)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from vlmserve.safety.bench.cases import bench_cases
from vlmserve.safety.bench.plots import write_plots
from vlmserve.safety.bench.report import failed, markdown, summarize, unenforced, write_results
from vlmserve.safety.bench.runner import Bench, BenchConfig
from vlmserve.safety.client import http_client
from vlmserve.safety.meta import load_average, report_meta, server_facts
from vlmserve.safety.policy import Policy

EXIT_UNENFORCED = 1
EXIT_FAILED_REQUESTS = 3


async def run_bench(
    base_url: str,
    api_key: str | None,
    timeout: float,
    policy: Policy,
    config: BenchConfig,
    out: Path,
) -> int:
    cases = bench_cases(config.seed)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_at_start = load_average()
    async with http_client(base_url, api_key, timeout, config.max_concurrency) as client:
        server = await server_facts(client)
        total = config.total_requests(len(cases))
        with tqdm(total=total, desc="bench", unit="req", file=sys.stderr) as bar:
            runs = await Bench(client, policy, cases, config, on_request=bar.update).run()
    summaries = [summarize(run, config.slo_ms) for run in runs]
    meta = {
        **report_meta(config.model, config.seed, f"{base_url} ({server})"),
        "policy": f"{policy.name} ({policy.hash})",
        "started": started,
        "load at start": load_at_start,
        "load at end": load_average(),
        "settings": config.describe(len(cases)),
    }
    bad, errors = unenforced(runs), failed(runs)
    code = EXIT_UNENFORCED if bad else EXIT_FAILED_REQUESTS if errors else 0
    verdict = {"exit_status": code, "constrained_invalid": len(bad), "no_answer": len(errors)}
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / "results.json", runs, summaries, config, meta, verdict)
    plots = write_plots(out, runs, summaries)
    (out / "report.md").write_text(
        markdown(runs, summaries, config, meta, plots, verdict), encoding="utf-8"
    )
    for s in summaries:
        print(
            f"{s.phase:<12} {s.mode:<13} c={s.concurrency:<3} valid {s.valid}/{s.requests} "
            f"{s.req_per_s:6.2f} req/s  p50 {s.latency_ms['p50']} ms  goodput {s.valid_goodput:.2f}/s"
        )
    print(f"report: {out / 'report.md'}")
    if bad:
        print(
            f"vlmserve bench: the server did not enforce response_format: {len(bad)} constrained "
            f"answer(s) invalid (first: case {bad[0].case}: {bad[0].problem})",
            file=sys.stderr,
        )
    elif errors:
        print(
            f"vlmserve bench: {len(errors)} request(s) got no answer (first: {errors[0].error})",
            file=sys.stderr,
        )
    return code
