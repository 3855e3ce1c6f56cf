"""The safety commands on vlmserve's command line: flags checked by name, the set writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmserve.cli import main, parse_args
from vlmserve.safety.dataset import CASES


def test_make_safety_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-safety-set", str(tmp_path / "set")]) == 0
    labels = Path(capsys.readouterr().out.strip())
    assert len([json.loads(line) for line in labels.read_text().splitlines()]) == len(CASES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["eval", "--dataset", "d", "--base-url", "u", "--trials", "0"],
            "argument --trials: must be at least 1",
        ),
        (
            ["bench", "--base-url", "u", "--model", "m", "--concurrency", "1,x"],
            "argument --concurrency: not an integer",
        ),
        (
            ["bench", "--base-url", "u", "--model", "m", "--slo-ms", "-5"],
            "argument --slo-ms: must be a positive number",
        ),
        (
            ["eval", "--dataset", "d", "--base-url", "u", "--temperature", "3"],
            "argument --temperature: must be from 0 to 2",
        ),
        (["classify", "x.png", "--api", "rest"], "argument --api: invalid choice: 'rest'"),
        (["bench", "--base-url", "u"], "the following arguments are required: --model"),
    ],
)
def test_bad_flags_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_classify_with_nothing_to_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["classify", str(tmp_path / "nope"), "--base-url", "http://127.0.0.1:9/v1"])
    assert code == 2 and "nope: no such file or folder" in capsys.readouterr().err


def test_a_missing_dataset_and_an_unreachable_server_are_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", "--dataset", str(tmp_path / "nope.jsonl"), "--base-url", "u"])
    err = capsys.readouterr().err
    assert code == 2 and f"--dataset {tmp_path / 'nope.jsonl'}: no such file" in err
    image = tmp_path / "a.png"
    image.write_bytes(b"not read: the server is asked first")
    code = main(["classify", str(image), "--base-url", "http://127.0.0.1:9/v1"])
    err = capsys.readouterr().err
    assert code == 2 and "error: cannot reach --base-url http://127.0.0.1:9: " in err, err
    assert "ConnectError(" not in err
    out = tmp_path / "bench"
    code = main(["bench", "--model", "m", "--base-url", "http://127.0.0.1:9", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "error: cannot reach --base-url http://127.0.0.1:9: " in err, err
    assert not out.exists()  # stopped before the levels, not a report of failures


def test_serve_moderation_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["serve"])
    assert (args.moderation_policy, args.moderation_max_images) == (None, 1)
    with pytest.raises(SystemExit):
        parse_args(["serve", "--moderation-max-images", "0"])
    assert "argument --moderation-max-images: must be at least 1" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    # Refused before any model is loaded or port bound.
    assert main(["serve", str(tmp_path / "model"), "--moderation-policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--moderation-policy: policy file {bad}: instructions: missing" in err
