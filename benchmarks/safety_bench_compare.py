"""`vlmserve bench` reports of several servers side by side: the headline table (markdown, as
the README shows it) and one comparison plot, read from each run's `results.json`.

    .venv/bin/python benchmarks/safety_bench_compare.py vlmserve=DIR "vLLM CPU=DIR" \\
        [--levels 1,8,32] --out DIR

Each DIR is a `vlmserve bench --out` folder. The table gives, per server: the share of valid
answers in each mode over all phases, the bench's exit status, the mean completion tokens of
a constrained answer, and for each constrained concurrency level of the sweep req/s, p50 /
p95 latency and valid goodput (schema-valid answers within the run's SLO per second). With
two servers a last column gives the first's req/s and goodput over the second's. The plot
(`comparison.png`) draws req/s, valid goodput and p50 / p95 latency of the constrained sweep
against concurrency for every server. Nothing here measures: the figures are the runs' own,
so a comparison is only as fair as the runs (same machine, model folder and settings; each
report records the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vlmserve.safety.plotting import new_figure, save

COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


def load(spec: str) -> tuple[str, dict[str, Any]]:
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise SystemExit(f"expected NAME=DIR, got {spec!r}")
    results = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
    if results.get("format") != "vlmserve-bench":
        raise SystemExit(f"{folder}/results.json is not a vlmserve bench report")
    return name, results


def _validity(results: dict[str, Any], mode: str) -> str:
    records = [r for r in results["records"] if r["mode"] == mode]
    valid = sum(r["valid"] for r in records)
    return f"{valid}/{len(records)} ({valid / len(records):.0%})" if records else "–"


def _tokens(results: dict[str, Any]) -> str:
    """How much each answer cost to write: req/s of two servers compare like work only when
    these agree."""
    counts = [
        r["completion_tokens"]
        for r in results["records"]
        if r["mode"] == "constrained" and r["completion_tokens"] is not None
    ]
    return f"{sum(counts) / len(counts):.1f}" if counts else "–"


def _sweep(results: dict[str, Any], level: int) -> dict[str, Any] | None:
    for s in results["summary"]:
        if s["phase"] == "concurrency" and s["mode"] == "constrained" and s["concurrency"] == level:
            return dict(s)
    return None


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def headline(runs: list[tuple[str, dict[str, Any]]], levels: list[int]) -> str:
    ratio = len(runs) == 2
    names = [name for name, _ in runs]
    header = ["", *names, *([f"{names[0]} / {names[1]}"] if ratio else [])]
    rows = [
        ["valid, unconstrained (all phases)", *(_validity(r, "unconstrained") for _, r in runs)],
        ["valid, constrained (all phases)", *(_validity(r, "constrained") for _, r in runs)],
        ["bench exit status", *(str(r["verdict"]["exit_status"]) for _, r in runs)],
        ["tokens per constrained answer (mean)", *(_tokens(r) for _, r in runs)],
    ]
    if ratio:
        for row in rows:
            row.append("")
    for level in levels:
        sweeps = [_sweep(r, level) for _, r in runs]
        if any(s is None for s in sweeps):
            continue
        got = [s for s in sweeps if s is not None]
        lines = [
            [f"c={level}: req/s", *(f"{s['req_per_s']:.2f}" for s in got)],
            [
                f"c={level}: p50 / p95 ms",
                *(f"{_ms(s['latency_ms']['p50'])} / {_ms(s['latency_ms']['p95'])}" for s in got),
            ],
            [f"c={level}: valid goodput/s", *(f"{s['valid_goodput']:.2f}" for s in got)],
        ]
        if ratio:
            for line, key in zip(lines, ("req_per_s", None, "valid_goodput")):
                first, second = (got[0][key], got[1][key]) if key else (0, 0)
                line.append(f"{first / second:.2f}×" if key and second else "")
        rows += lines
    table = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(row) + " |" for row in table) + "\n"


def plot(runs: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    figure = new_figure(10.0, 4.0)
    throughput, latency = figure.subplots(1, 2)
    levels: set[int] = set()
    for (name, results), colour in zip(runs, COLOURS):
        sweep = sorted(
            (
                s
                for s in results["summary"]
                if s["phase"] == "concurrency" and s["mode"] == "constrained"
            ),
            key=lambda s: s["concurrency"],
        )
        x = [s["concurrency"] for s in sweep]
        levels.update(x)
        throughput.plot(x, [s["req_per_s"] for s in sweep], marker="o", color=colour, label=name)
        throughput.plot(
            x,
            [s["valid_goodput"] for s in sweep],
            marker="x",
            linestyle="--",
            color=colour,
            label=f"{name} valid goodput",
        )
        answered = [s for s in sweep if s["latency_ms"]["p50"] is not None]
        for key, style in (("p50", "-"), ("p95", ":")):
            latency.plot(
                [s["concurrency"] for s in answered],
                [s["latency_ms"][key] for s in answered],
                marker="o",
                linestyle=style,
                color=colour,
                label=f"{name} {key}",
            )
    for axes in (throughput, latency):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted(levels), [str(level) for level in sorted(levels)])
        axes.minorticks_off()
        axes.set_xlabel("concurrency (constrained requests)")
        axes.legend(fontsize="small")
    throughput.set_ylabel("per second")
    throughput.set_title("throughput and valid goodput")
    latency.set_ylabel("latency (ms)")
    latency.set_title("latency")
    save(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=DIR", help="a bench --out folder")
    parser.add_argument("--levels", default="1,8,32", help="sweep levels in the table")
    parser.add_argument("--out", required=True, help="folder for headline.md, comparison.png")
    args = parser.parse_args(argv)
    runs = [load(spec) for spec in args.runs]
    levels = [int(level) for level in args.levels.split(",") if level.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = headline(runs, levels)
    (out / "headline.md").write_text(table, encoding="utf-8")
    plot(runs, out / "comparison.png")
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
