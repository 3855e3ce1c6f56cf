"""`vlmserve bench` end to end: against our server on the tiny model every constrained answer
is valid in every phase and case; against a server that ignores `response_format` it exits
non-zero saying so; it refuses a non-loopback server unless told."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.safety.conftest import MODEL, ThreadServer
from tests.safety.fakes import FAKE_MODEL, answer_json, fake_app
from vlmserve.cli import main
from vlmserve.safety.bench.cases import bench_cases

TINY_PHASES = [
    "--max-tokens",
    "40",
    "--small-max-tokens",
    "40",
    "--concurrency",
    "1,3",
    "--requests-per-level",
    "3",
    "--burst",
    "4",
    "--burst-concurrency",
    "2",
]


def test_constrained_arm_is_always_valid(live_server: ThreadServer, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code = main(
        ["bench", "--base-url", live_server.url, "--model", MODEL, "--out", str(out), *TINY_PHASES]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["format"], results["version"]) == ("vlmserve-bench", 1)
    records = results["records"]
    cases = len(bench_cases(0))
    assert len(records) == 2 * cases + 2 * 3 + 2 * 4
    constrained = [r for r in records if r["mode"] == "constrained"]
    assert constrained and all(
        r["valid"] and r["enum_ok"] and r["error"] is None for r in constrained
    )
    assert {r["phase"] for r in records} == {"cases", "concurrency", "burst"}
    assert {r["case"] for r in constrained} == {c.name for c in bench_cases(0)}
    report = (out / "report.md").read_text()
    assert "every answer of" in report and MODEL in report
    for name in (
        "throughput_vs_concurrency",
        "latency_vs_concurrency",
        "validity_per_case",
        "latency_cdf",
    ):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_server_that_ignores_response_format_fails_the_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fenced = "```json\n" + answer_json("no_issues") + "\n```"
    with ThreadServer(fake_app(lambda body: fenced)) as fake:
        out = tmp_path / "bench"
        code = main(
            [
                "bench",
                "--base-url",
                fake.url,
                "--model",
                FAKE_MODEL,
                "--out",
                str(out),
                *TINY_PHASES,
            ]
        )
    assert code == 1
    assert "did not enforce response_format" in capsys.readouterr().err
    assert "did not enforce `response_format`" in (out / "report.md").read_text()
    records = json.loads((out / "results.json").read_text())["records"]
    assert records and all(not r["valid"] and r["fenced"] and r["recoverable"] for r in records)


def test_streaming_measures_time_to_first_token(live_server: ThreadServer, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    phases = "--max-tokens 40 --small-max-tokens 40 --concurrency 2 --requests-per-level 2 --burst 2 --burst-concurrency 2"
    code = main(
        [
            "bench",
            "--base-url",
            live_server.url,
            "--model",
            MODEL,
            "--out",
            str(out),
            "--stream",
            *phases.split(),
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    answered = [r for r in results["records"] if r["error"] is None]
    assert answered and all(0 < r["ttft_s"] <= r["latency_s"] for r in answered)
    assert all(s["ttft_ms"]["p50"] > 0 for s in results["summary"])
    assert "TTFT" in (out / "report.md").read_text()


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000/v1", "https://api.example.com/v1"])
def test_remote_servers_need_allow_remote(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "--base-url", url, "--model", "m", "--out", str(tmp_path / "b")])
    assert code == 2 and "--allow-remote" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
