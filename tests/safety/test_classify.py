"""`vlmserve classify`: files, folders and URLs; per-item errors recorded and counted, never
fatal; a re-run skips what is done; in this process by default (with class scores), over a
server's /v1/moderations (the same, its policy checked) or its chat API; and a run killed
with SIGKILL at random points, then resumed, classifies every image exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.children import spawn
from tests.safety.conftest import MODEL, ThreadServer
from tests.safety.fakes import FAKE_MODEL, answer_json, fake_app
from vlmserve.cli import main
from vlmserve.safety.dataset import png_bytes
from vlmserve.safety.policy import load_policy
from vlmserve.safety.store import ResultStore

REPO = Path(__file__).resolve().parents[2]


def _images(folder: Path, count: int) -> list[Path]:
    """`count` distinct small PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        path.write_bytes(png_bytes(Image.new("RGB", (32, 32), (i % 256, (i * 7) % 256, i // 256))))
        paths.append(path)
    return paths


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_classify_records_errors_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "in" / "notes.txt").write_text("skipped: not an image suffix")
    copy = tmp_path / "copy.png"
    copy.write_bytes(images[0].read_bytes())  # the same bytes under another name
    files = {"remote.png": png_bytes(Image.new("RGB", (40, 40), "blue"))}
    with ThreadServer(fake_app(lambda body: answer_json("tobacco", language="en"), files)) as fake:
        remote = fake.url.removesuffix("/v1") + "/files/remote.png"
        missing = fake.url.removesuffix("/v1") + "/files/missing.png"
        out = tmp_path / "results.jsonl"
        argv = [
            "classify",
            str(tmp_path / "in"),
            str(copy),
            remote,
            missing,
            "--base-url",
            fake.url,
            "--out",
            str(out),
            "--concurrency",
            "2",
            "--api",
            "chat",
        ]
        assert main(argv) == 1  # two items failed
        first = capsys.readouterr().out
        assert "4 classified, 1 already done, 2 failed" in first and "tobacco 4" in first
        records = _records(out)
        ok = [r for r in records if r["status"] == "ok"]
        assert len(ok) == 4 and all(r["best_class"] == "tobacco" for r in ok)
        assert {r["model"] for r in records} == {FAKE_MODEL}
        policy_hash = load_policy().hash
        digest = hashlib.sha256(images[1].read_bytes()).hexdigest()
        assert f"{digest}:{policy_hash}" in {r["key"] for r in ok}
        errors = {Path(r["source"]).name: r["error"] for r in records if r["status"] == "error"}
        assert errors["broken.png"].startswith("not an image")
        assert "HTTP 404" in errors["missing.png"]
        assert main(argv) == 1  # the failed items are tried again, the rest skipped
        assert "0 classified, 5 already done, 2 failed" in capsys.readouterr().out
        assert len(fake.server.config.app.state.bodies) == 4


def test_csv_output_and_invalid_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _images(tmp_path / "in", 2)
    fenced = "```json\n" + answer_json("alcohol") + "\n```"
    with ThreadServer(fake_app(lambda body: fenced)) as fake:
        out = tmp_path / "results.csv"
        argv = ["classify", *map(str, images), "--base-url", fake.url, "--api", "chat"]
        assert main([*argv, "--out", str(out)]) == 1
    text = out.read_text()
    assert text.startswith("key,sha256,policy_hash,source,status,")
    assert text.count("invalid answer: not JSON") == 2 and ",ok," not in text
    assert "0 classified, 0 already done, 2 failed" in capsys.readouterr().out


def assert_scored(record: dict[str, Any]) -> None:
    """Class scores that are a distribution, whose argmax is the answer, with the flag."""
    policy = load_policy()
    scores = record["scores"]
    assert list(scores) == list(policy.class_names)
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    assert max(scores, key=lambda name: scores[name]) == record["best_class"]
    flagged = any(c.threshold is not None and scores[c.name] >= c.threshold for c in policy.classes)
    assert record["flagged"] is flagged


def test_in_process_by_default_with_class_scores(
    tiny_qwen2_vl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "in", 3)
    out = tmp_path / "results.csv"
    argv = ["classify", str(tmp_path / "in"), "--model", str(tiny_qwen2_vl), "--out", str(out)]
    assert main([*argv, "--max-tokens", "40"]) == 0
    assert "3 classified, 0 already done, 0 failed" in capsys.readouterr().out
    store = ResultStore(out)
    records = store.open()
    store.close()
    assert len(records) == 3 and {r["model"] for r in records} == {str(tiny_qwen2_vl)}
    for record in records:
        assert record["status"] == "ok"
        assert_scored(record)
    assert main([*argv, "--max-tokens", "40"]) == 0  # nothing left to do
    assert "0 classified, 3 already done" in capsys.readouterr().out
    assert {r["sha256"] for r in records} == {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in images
    }


def test_a_server_under_another_policy_is_refused(
    live_server: ThreadServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "in", 1)
    other = tmp_path / "other.yaml"
    load_policy().with_temperature(2.0).dump(other)
    argv = ["classify", str(images[0]), "--base-url", live_server.url, "--policy", str(other)]
    assert main([*argv, "--out", str(tmp_path / "r.jsonl"), "--max-tokens", "40"]) == 2
    assert "the server moderates under policy 'default'" in capsys.readouterr().err


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(live_server: ThreadServer, tmp_path: Path) -> None:
    images = _images(tmp_path / "in", 200)
    out = tmp_path / "results.jsonl"
    command = [
        sys.executable,
        "-m",
        "vlmserve.cli",
        "classify",
        str(tmp_path / "in"),
        "--base-url",
        live_server.url,
        "--model",
        MODEL,
        "--out",
        str(out),
        "--concurrency",
        "8",
        "--max-tokens",
        "40",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    rng = random.Random(12)
    kills = 0
    for _attempt in range(40):
        before = _count_lines(out)
        process = spawn(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill after a random number of new results (sometimes before any), at a random
        # moment within the write that follows.
        target = before + rng.choice([0, rng.randint(1, 60)])
        deadline = time.monotonic() + 120
        while process.poll() is None and _count_lines(out) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        if process.poll() is None and kills < 6:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            kills += 1
            continue
        assert process.wait(timeout=300) == 0
        break
    else:
        pytest.fail("classify never finished")
    assert kills >= 3
    records = _records(out)
    assert all(r["status"] == "ok" for r in records)
    for record in records:  # over the server's /v1/moderations: with class scores
        assert_scored(record)
    by_digest = Counter(r["sha256"] for r in records)
    expected = {hashlib.sha256(p.read_bytes()).hexdigest() for p in images}
    assert set(by_digest) == expected and set(by_digest.values()) == {1}  # exactly once
