"""`vlmserve bench` end to end: against our server on the tiny model every constrained answer
is valid in every phase and case; against a server that ignores `response_format` (fences,
raw control characters) it exits 1 saying so, against one that answers errors it exits 3;
the report names the machine, its load and the settings; it refuses a non-loopback server
unless told; benchmarks/safety_bench_compare.py puts two reports side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.safety_bench_compare import main as compare
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.safety.conftest import MODEL, ThreadServer
from tests.safety.fakes import FAKE_MODEL, answer_json, fake_app
from vlmserve.cli import main
from vlmserve.safety.bench.cases import bench_cases
from vlmserve.safety.bench.runner import BenchConfig

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
    assert results["verdict"] == {"exit_status": 0, "constrained_invalid": 0, "no_answer": 0}
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
    # The machine and how busy it was, and that these phases are not the full default ones.
    for key in ("machine", "load at start", "load at end"):
        assert results["meta"][key] and f"- {key}: " in report
    assert "cores" in results["meta"]["machine"]
    assert results["meta"]["settings"].startswith("phases changed from the defaults: cases ")
    assert f"; {len(records)} requests;" in results["meta"]["settings"]
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
    report = (out / "report.md").read_text()
    assert "did not enforce `response_format`" in report and "exit status: 1." in report
    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert results["verdict"] == {
        "exit_status": 1,
        "constrained_invalid": sum(r["mode"] == "constrained" for r in records),
        "no_answer": 0,
    }
    assert records and all(not r["valid"] and r["fenced"] and r["recoverable"] for r in records)


def test_raw_control_characters_in_constrained_answers_fail_the_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that constrains, but lets control characters into strings (vLLM's CPU build
    with its default grammar engine): the bench exits 1 and the report says what it saw."""

    def leaky(body: dict) -> str:
        return answer_json("no_issues", explanation="a?b").replace("a?b", "a\x01b")

    with ThreadServer(fake_app(leaky)) as fake:
        out = tmp_path / "bench"
        argv = ["bench", "--base-url", fake.url, "--model", FAKE_MODEL, "--out", str(out)]
        assert main([*argv, *TINY_PHASES]) == 1
    assert "Invalid control character" in capsys.readouterr().err
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| solid_black |"))
    unconstrained, constrained = row.split(" | ")[4:6]
    assert unconstrained == "not JSON 2, raw control characters 2"
    assert constrained == "not JSON 4, raw control characters 4 |"
    cases = len(bench_cases(0))
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 2 * cases + 14 and all(r["control_chars"] for r in records)


def test_requests_without_an_answer_are_counted_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that refuses `response_format` with an error gives no answer, not an invalid
    one: the bench exits 3 and names the error; the unconstrained answers still count."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        if "response_format" in body:
            error = {"message": "response_format is not supported", "type": "invalid_request"}
            return JSONResponse({"error": error}, status_code=400)
        message = {"role": "assistant", "content": answer_json("no_issues")}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return JSONResponse({"choices": [choice], "usage": {"completion_tokens": 9}})

    with ThreadServer(app) as fake:
        out = tmp_path / "bench"
        argv = ["bench", "--base-url", fake.url, "--model", FAKE_MODEL, "--out", str(out)]
        assert main([*argv, *TINY_PHASES]) == 3
    err = capsys.readouterr().err
    assert "got no answer (first: HTTP 400: response_format is not supported)" in err
    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    constrained = [r for r in records if r["mode"] == "constrained"]
    assert results["verdict"] == {
        "exit_status": 3,
        "constrained_invalid": 0,
        "no_answer": len(constrained),
    }
    assert all(r["status"] == 400 and not r["valid"] for r in constrained)
    assert all(r["valid"] for r in records if r["mode"] == "unconstrained")
    summary = {(s["phase"], s["mode"]): s for s in results["summary"]}
    assert summary["burst", "constrained"]["success_rate"] == 0.0
    assert summary["burst", "unconstrained"]["valid_rate"] == 1.0
    report = (out / "report.md").read_text()
    assert "request(s) got no answer" in report and "exit status: 3." in report


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


def test_settings_say_whether_the_phases_were_shortened() -> None:
    full = BenchConfig("m").describe(20)
    assert full.startswith("default phases: cases 20 × 2 modes; concurrency 1,4,8,16,32 × 20")
    assert "; 240 requests;" in full
    for changed in ({"requests_per_level": 5}, {"burst_concurrency": 4}, {"burst_requests": 10}):
        assert BenchConfig("m", **changed).describe(20).startswith("phases changed")  # type: ignore[arg-type]


def test_headline_table_compares_two_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/safety_bench_compare.py (the README's table and plot) on two fake servers:
    one that follows response_format, one that fences every answer."""

    def follows(body: dict) -> str:
        valid = answer_json("alcohol")
        return valid if "response_format" in body else "```json\n" + valid + "\n```"

    outs, codes = {}, {}
    for name, answer in (("good", follows), ("bad", lambda body: "```json\n{}\n```")):
        outs[name] = tmp_path / name
        with ThreadServer(fake_app(answer)) as fake:
            argv = ["bench", "--base-url", fake.url, "--model", FAKE_MODEL, "--out"]
            codes[name] = main([*argv, str(outs[name]), *TINY_PHASES])
    assert codes == {"good": 0, "bad": 1}
    capsys.readouterr()
    runs = [f"good={outs['good']}", f"bad={outs['bad']}"]
    assert compare([*runs, "--levels", "1,3,8", "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "headline.md").read_text()
    assert table == capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    cases = len(bench_cases(0))
    assert table.splitlines()[0] == "|  | good | bad | good / bad |"
    assert (
        f"| 0/{cases + 4} (0%) | 0/{cases + 4} (0%) |" in rows["valid, unconstrained (all phases)"]
    )
    n = cases + 6 + 4
    assert f"| {n}/{n} (100%) | 0/{n} (0%) |" in rows["valid, constrained (all phases)"]
    assert "| 0 | 1 |" in rows["bench exit status"]
    assert "| 1.0 | 1.0 |" in rows["tokens per constrained answer (mean)"]
    assert {"c=1: req/s", "c=3: p50 / p95 ms", "c=3: valid goodput/s"} <= set(rows)
    assert not any(key.startswith("c=8") for key in rows)  # not a level of this run
    assert (tmp_path / "cmp" / "comparison.png").read_bytes().startswith(b"\x89PNG")
