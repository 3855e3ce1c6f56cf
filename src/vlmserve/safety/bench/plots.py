"""The bench's figures: throughput and latency against concurrency (the sweep as lines, the
burst of each mode as a point), validity per case in both modes, and the latency CDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from vlmserve.safety.bench.report import Summary, per_case
from vlmserve.safety.bench.runner import MODES, PhaseRun
from vlmserve.safety.plotting import new_figure, save

COLOURS = {"unconstrained": "tab:orange", "constrained": "tab:blue"}


def write_plots(out: Path, runs: list[PhaseRun], summaries: list[Summary]) -> list[str]:
    names = []
    for name, draw in (
        ("throughput_vs_concurrency.png", _throughput),
        ("latency_vs_concurrency.png", _latency),
    ):
        figure = new_figure()
        draw(figure.add_subplot(), summaries)
        save(figure, out / name)
        names.append(name)
    figure = new_figure(8.0, 4.6)
    _validity(figure.add_subplot(), runs)
    save(figure, out / "validity_per_case.png")
    figure = new_figure()
    _cdf(figure.add_subplot(), runs)
    save(figure, out / "latency_cdf.png")
    return [*names, "validity_per_case.png", "latency_cdf.png"]


def _by_mode(summaries: list[Summary], phase: str, mode: str) -> list[Summary]:
    return sorted(
        (s for s in summaries if s.phase == phase and s.mode == mode), key=lambda s: s.concurrency
    )


def _concurrency_axis(axes: Axes, summaries: list[Summary]) -> None:
    levels = sorted({s.concurrency for s in summaries if s.phase != "cases"})
    axes.set_xscale("log", base=2)
    axes.set_xticks(levels, [str(level) for level in levels])
    axes.minorticks_off()
    axes.set_xlabel("concurrency (squares: the burst)")


def _throughput(axes: Axes, summaries: list[Summary]) -> None:
    for mode in MODES:
        sweep = _by_mode(summaries, "concurrency", mode)
        if sweep:
            x = [s.concurrency for s in sweep]
            axes.plot(
                x,
                [s.req_per_s for s in sweep],
                marker="o",
                color=COLOURS[mode],
                label=f"{mode} req/s",
            )
            axes.plot(
                x,
                [s.valid_goodput for s in sweep],
                linestyle="--",
                marker="x",
                color=COLOURS[mode],
                label=f"{mode} valid goodput/s",
            )
        for s in _by_mode(summaries, "burst", mode):
            axes.scatter(
                [s.concurrency],
                [s.req_per_s],
                marker="s",
                color=COLOURS[mode],
                label=f"{mode} burst req/s",
            )
    _concurrency_axis(axes, summaries)
    axes.set_ylabel("per second")
    axes.set_title("throughput")
    axes.legend(fontsize="small")


def _latency(axes: Axes, summaries: list[Summary]) -> None:
    for mode in MODES:
        sweep = [
            s for s in _by_mode(summaries, "concurrency", mode) if s.latency_ms["p50"] is not None
        ]
        if sweep:
            x = [s.concurrency for s in sweep]
            axes.plot(
                x,
                [s.latency_ms["p50"] or 0.0 for s in sweep],
                marker="o",
                color=COLOURS[mode],
                label=f"{mode} p50",
            )
            axes.plot(
                x,
                [s.latency_ms["p95"] or 0.0 for s in sweep],
                linestyle="--",
                marker="x",
                color=COLOURS[mode],
                label=f"{mode} p95",
            )
        for s in _by_mode(summaries, "burst", mode):
            if s.latency_ms["p50"] is not None:
                axes.scatter(
                    [s.concurrency],
                    [s.latency_ms["p50"]],
                    marker="s",
                    color=COLOURS[mode],
                    label=f"{mode} burst p50",
                )
    _concurrency_axis(axes, summaries)
    axes.set_ylabel("latency (ms)")
    axes.set_title("latency")
    axes.legend(fontsize="small")


def _validity(axes: Axes, runs: list[PhaseRun]) -> None:
    table = per_case(runs)
    cases = list(table)
    x = np.arange(len(cases))
    for offset, mode in zip((-0.2, 0.2), MODES):
        rates = [
            sum(r.valid for r in table[c][mode]) / len(table[c][mode]) if table[c][mode] else 0.0
            for c in cases
        ]
        axes.bar(x + offset, rates, width=0.4, color=COLOURS[mode], label=mode)
    axes.set_xticks(x, cases, rotation=60, ha="right", fontsize="small")
    axes.set_ylim(0, 1.3)
    axes.set_ylabel("valid answers (share)")
    axes.set_title("validity per case")
    axes.legend(fontsize="small", loc="upper center", ncols=2)


def _cdf(axes: Axes, runs: list[PhaseRun]) -> None:
    for mode in MODES:
        latencies = sorted(
            r.latency_s * 1000
            for run in runs
            for r in run.records
            if r.mode == mode and r.error is None
        )
        if latencies:
            axes.step(
                latencies,
                np.arange(1, len(latencies) + 1) / len(latencies),
                where="post",
                color=COLOURS[mode],
                label=mode,
            )
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("share of answered requests")
    axes.set_title("latency CDF (all phases)")
    axes.legend(fontsize="small")
