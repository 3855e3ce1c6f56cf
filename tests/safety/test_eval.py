"""`vlmserve eval` end to end: against a fake server whose answers and class scores the test
chose (so every metric is known), against our server's /v1/moderations and an engine in this
process on the tiny model (real class scores), with trials, a fitted temperature and a
baseline."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.safety.conftest import MODEL, ThreadServer
from tests.safety.fakes import FAKE_MODEL, answer_json, fake_app, image_sha256
from vlmserve.cli import main
from vlmserve.safety.dataset import write_dataset
from vlmserve.safety.policy import load_policy

# Right on every item but three: a no_issues image called alcohol, a beer sign answered in
# markdown fences (invalid, even though the JSON inside says "alcohol"), and an invented class.
WRONG = {
    "solid_black": answer_json("alcohol"),
    "beer_de": "```json\n" + answer_json("alcohol") + "\n```",
    "masked_profanity": answer_json("drugs"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("set"))


CLASSES = load_policy().class_names


def _labels_by_image(dataset: Path) -> dict[str, str]:
    labels = {}
    for line in dataset.read_text().splitlines():
        record = json.loads(line)
        digest = hashlib.sha256((dataset.parent / record["image"]).read_bytes()).hexdigest()
        labels[digest] = record["label"]
    return labels


def _answers_by_image(dataset: Path, wrong: dict[str, str]) -> dict[str, str]:
    answers = {}
    for line in dataset.read_text().splitlines():
        record = json.loads(line)
        digest = hashlib.sha256((dataset.parent / record["image"]).read_bytes()).hexdigest()
        answers[digest] = wrong.get(record["id"], answer_json(record["label"]))
    return answers


def _run(url: str, dataset: Path, out: Path, *flags: str) -> int:
    return main(["eval", "--dataset", str(dataset), "--base-url", url, "--out", str(out), *flags])


def _chat(url: str, dataset: Path, out: Path, *flags: str) -> int:
    return _run(url, dataset, out, "--api", "chat", *flags)


def test_metrics_of_known_answers(dataset: Path, tmp_path: Path) -> None:
    answers = _answers_by_image(dataset, WRONG)
    with ThreadServer(fake_app(lambda body: answers[image_sha256(body)])) as fake:
        assert _chat(fake.url, dataset, tmp_path / "out") == 0
        bodies = fake.server.config.app.state.bodies
    body = bodies[0]
    assert body["model"] == FAKE_MODEL  # the first model the server lists
    assert body["response_format"]["json_schema"]["schema"] == load_policy().output_schema()
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert (result["format"], result["version"]) == ("vlmserve-eval", 1)
    metrics = result["summary"]["metrics"]
    assert metrics["n"] == 14 and metrics["invalid"] == 2  # the fenced and the invented class
    assert metrics["accuracy"] == pytest.approx(11 / 14)
    items = {item["id"]: item for item in result["items"]}
    assert (
        items["beer_de"]["prediction"] is None and items["solid_black"]["prediction"] == "alcohol"
    )
    with (tmp_path / "out" / "confusion.csv").open() as f:
        rows = {row[0]: row[1:] for row in csv.reader(f)}
    assert rows["true \\ predicted"][-1] == "invalid"
    assert rows["alcohol"] == ["4", "0", "0", "0", "0", "0", "1"]  # beer_de is invalid
    assert rows["no_issues"] == ["1", "0", "0", "0", "0", "7", "0"]
    assert rows["profanity"] == ["0", "0", "0", "0", "0", "0", "1"]
    binary = result["summary"]["metrics"]["binary"]
    assert binary["false_positive_rate"] == pytest.approx(1 / 8)  # 8 no_issues images
    assert result["summary"]["calibration"] is None  # the chat API gives no class scores
    assert (tmp_path / "out" / "confusion.png").read_bytes().startswith(b"\x89PNG")
    assert "accuracy 0.786" in (tmp_path / "out" / "report.md").read_text()


def test_trials_calibration_and_fitted_temperature(dataset: Path, tmp_path: Path) -> None:
    labels = _labels_by_image(dataset)
    calls: dict[str, int] = {}

    def scored(body: dict[str, Any]) -> tuple[str, dict[str, float]]:
        """The label scores 0.6 but every other trial answers "violence": votes disagree,
        scores do not (they never depend on sampling)."""
        digest = image_sha256(body)
        calls[digest] = calls.get(digest, 0) + 1
        label = labels[digest]
        others = [c for c in CLASSES if c != label]
        scores = {c: (0.6 if c == label else 0.4 / len(others)) for c in CLASSES}
        return (label if calls[digest] % 2 else "violence"), scores

    policy_out = tmp_path / "fitted.yaml"
    with ThreadServer(fake_app(lambda body: "", scores=scored)) as fake:
        code = _run(
            fake.url,
            dataset,
            tmp_path / "out",
            "--trials",
            "3",
            "--temperature",
            "0.7",
            "--fit-temperature",
            str(policy_out),
        )
        bodies = fake.server.config.app.state.bodies
    assert code == 0
    assert {b["vlmserve"]["seed"] for b in bodies} == {0, 1, 2}  # trial t: seed + t
    assert {b["vlmserve"]["temperature"] for b in bodies} == {0.7}
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert all(item["agreement"] == pytest.approx(2 / 3) for item in result["items"])
    assert result["summary"]["metrics"]["accuracy"] == 1.0  # two of three votes are right
    calibration = result["summary"]["calibration"]
    assert calibration["n"] == 14 and calibration["ece"] == pytest.approx(0.4)  # 0.6 vs 1.0
    fitted = load_policy(policy_out)
    assert fitted.temperature == pytest.approx(result["summary"]["fitted_temperature"])
    assert fitted.temperature < 1.0 and fitted.classes == load_policy().classes
    assert (tmp_path / "out" / "reliability.png").read_bytes().startswith(b"\x89PNG")


def test_vs_baseline_lists_regressions_and_fixes(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _answers_by_image(dataset, WRONG)
    second = _answers_by_image(dataset, {"beer_en": answer_json("tobacco")})  # fixes 3, breaks 1
    with ThreadServer(fake_app(lambda body: first[image_sha256(body)])) as fake:
        assert _chat(fake.url, dataset, tmp_path / "base") == 0
    with ThreadServer(fake_app(lambda body: second[image_sha256(body)])) as fake:
        code = _chat(
            fake.url, dataset, tmp_path / "new", "--vs", str(tmp_path / "base" / "eval.json")
        )
    assert code == 0
    comparison = json.loads((tmp_path / "new" / "eval.json").read_text())["summary"]["comparison"]
    assert [c["id"] for c in comparison["regressions"]] == ["beer_en"]
    assert {c["id"] for c in comparison["fixes"]} == {"solid_black", "beer_de", "masked_profanity"}
    assert "1 regression(s), 3 fix(es)" in capsys.readouterr().out


def _assert_scored_run(out: Path) -> None:
    result = json.loads((out / "eval.json").read_text())
    # Random weights get the labels wrong, but a constrained answer is never invalid, and
    # every item has class scores (a distribution whose argmax is the answer).
    assert result["summary"]["metrics"]["invalid"] == 0 and result["summary"]["errors"] == 0
    assert result["summary"]["calibration"]["n"] == 14
    for item in result["items"]:
        scores = dict(zip(CLASSES, item["scores"], strict=True))
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert max(scores, key=lambda name: scores[name]) == item["prediction"]


def test_against_our_server_and_in_process(
    dataset: Path, live_server: ThreadServer, tiny_qwen2_vl: Path, tmp_path: Path
) -> None:
    code = _run(live_server.url, dataset, tmp_path / "http", "--max-tokens", "40", "--model", MODEL)
    assert code == 0
    _assert_scored_run(tmp_path / "http")
    argv = ["eval", "--dataset", str(dataset), "--out", str(tmp_path / "local")]
    assert main([*argv, "--model", str(tiny_qwen2_vl), "--max-tokens", "40"]) == 0
    _assert_scored_run(tmp_path / "local")


def test_bad_dataset_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"image": "a.png", "label": "alcohol"}\n{"image": "b.png", "label": "beer"}\n')
    assert _run("http://127.0.0.1:9/v1", bad, tmp_path / "out") == 2
    assert f"{bad}:2: label: 'beer' is not a policy class" in capsys.readouterr().err
