"""Start-up failures are one line naming the flag, with exit status 2, never a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmserve.api import server
from vlmserve.cli import main
from vlmserve.cli.errors import flag_names, in_flag_words
from vlmserve.cli.main import _parsers
from vlmserve.engine.loading import cpu_has_native_bf16
from vlmserve.models import quantize
from vlmserve.models.tiny import make_tiny_model


@pytest.fixture(autouse=True)
def never_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The port is bound before the model loads, so a start-up failure stops a server that
    is already serving: this one serves nothing, on a free port, and a case that wrongly
    starts fails instead of serving forever."""

    async def serve_until_stopped(self: object, sockets: object = None) -> None:
        for _ in range(6000):
            if getattr(self, "should_exit", False):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the server started although start-up should have failed")

    bind = server.bind
    monkeypatch.setattr(server, "bind", lambda host, port: bind("127.0.0.1", 0))
    monkeypatch.setattr(server.uvicorn.Server, "serve", serve_until_stopped)
    monkeypatch.setenv("VLMSERVE_CACHE", str(tmp_path / "cache"))


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("vlmserve serve: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def weightless_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("seven_b"), preset="7b")


def test_missing_folder(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["serve", "/nonexistent/Qwen2-VL-2B-Instruct"], capsys)
    assert "model folder /nonexistent/Qwen2-VL-2B-Instruct does not exist" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tiny_qwen2_vl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["serve", str(tiny_qwen2_vl), "--device", "cuda"], capsys)
    assert "--device cuda, but CUDA is not available here" in line
    assert "use --device cpu" in line


@pytest.mark.parametrize("mode", [[], ["--engine-process"]], ids=["in-process", "engine-process"])
def test_max_model_len_too_big_for_the_cache(
    tiny_qwen2_vl: Path, capsys: pytest.CaptureFixture[str], mode: list[str]
) -> None:
    """Also when the engine is built in an engine process: its error crosses intact."""
    argv = ["serve", str(tiny_qwen2_vl), *mode, "--max-model-len", "30000"]
    line = one_line_error([*argv, "--kv-cache-memory-bytes", "1MiB"], capsys)
    # 1 MiB of blocks in the dtype --dtype auto picks here: bf16 where the CPU has it.
    tokens = 2032 if cpu_has_native_bf16() else 1008
    assert f"--max-model-len 30000 does not fit in the KV cache of {tokens} tokens" in line
    assert "lower --max-model-len or give the cache more memory (--kv-cache-memory-bytes" in line


def test_int8_where_its_sums_are_not_exact_names_the_flag(
    tiny_qwen2_vl: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU without VNNI (the probe says no) the refusal speaks the flag as typed."""
    monkeypatch.setattr(quantize, "int8_available", lambda: False)
    line = one_line_error(["serve", str(tiny_qwen2_vl), "--quantization", "int8"], capsys)
    assert "--quantization int8 needs int8 GEMMs with exact int32 sums" in line
    assert "quantization=" not in line and "'int8'" not in line


def test_weightless_7b_folder_names_the_flag(
    weightless_7b: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_line_error(["serve", str(weightless_7b)], capsys)
    assert f"no weights in {weightless_7b}" in line and "--load-format dummy" in line
    assert "load_format" not in line


def test_missing_chat_template(tiny_qwen2_vl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["serve", str(tiny_qwen2_vl), "--chat-template", "/nope.j2"], capsys)
    assert "--chat-template /nope.j2: No such file or directory" in line


def test_engine_process_with_ray(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["serve", "/m", "--ray", "--engine-process"], capsys)
    assert "--engine-process cannot be combined with --ray" in line


def test_int8_quantization_on_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["serve", "/m", "--quantization", "int8", "--device", "cuda:1"], capsys)
    assert "--quantization int8 runs on CPU only" in line and "--device is cuda:1" in line


def test_bad_media_settings(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["serve", "/m", "--allowed-media-ports", "0"], capsys)
    assert "--allowed-media-ports must be in 1..65535" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--served-model-name", " qwen"], "--served-model-name: ' qwen' may not contain"),
        (["--tokenizer", ""], "--tokenizer: must name a tokenizer folder or hub id"),
    ],
)
def test_a_bad_registration_of_the_served_model_names_the_flag(
    tiny_qwen2_vl: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    line = one_line_error(["serve", str(tiny_qwen2_vl), *flags], capsys)
    assert expected in line and "'alias'" not in line and "'tokenizer'" not in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--limit-mm-per-prompt", '{"image": -1}'],
            "--limit-mm-per-prompt: 'image' must be a whole number >= 0, got -1",
        ),
        (
            ["--limit-mm-per-prompt", '{"audio": 1}'],
            "--limit-mm-per-prompt: 'audio' is not a modality (known: image, video)",
        ),
        (["--api-keys-file", "/nope/keys.yaml"], "--api-keys-file /nope/keys.yaml: No such file"),
    ],
)
def test_settings_the_server_cannot_use_are_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    line = one_line_error(["serve", "/m", *flags], capsys)
    assert expected in line and "Errno" not in line, line


def test_hub_id_without_the_hub_is_one_line_with_status_2(tmp_path: Path) -> None:
    """A real process: the exit status and stderr the user sees. Offline mode stands in for
    "no network" (the same error path, and tests never leave loopback)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(
        [sys.executable, "-m", "vlmserve.cli", "serve", "Qwen/Qwen2-VL-2B-Instruct", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 2, run.stderr
    # The port is bound and the start-up log written before the model loads; the failure
    # is then the last line, once, without a traceback.
    lines = run.stderr.strip().splitlines()
    assert [line for line in lines if "error: " in line][-1] == lines[-1], run.stderr
    assert sum(line.startswith("vlmserve serve: error: ") for line in lines) == 1
    assert lines[-1].startswith("vlmserve serve: error: model 'Qwen/Qwen2-VL-2B-Instruct' is not")
    assert "Hugging Face hub did not provide it" in lines[-1] and "Traceback" not in run.stderr


def test_field_names_become_flags() -> None:
    flags = flag_names(_parsers()[1]["serve"])
    said = in_flag_words(
        "max_model_len=40000 does not fit; load_format='dummy' or raise\n"
        "gpu_memory_utilization; max_bytes_per_item must be > 0 in /tmp/tiny-qwen2_vl",
        flags,
    )
    assert said == (
        "--max-model-len 40000 does not fit; --load-format dummy or raise "
        "--gpu-memory-utilization; --media-max-bytes-per-item must be > 0 in /tmp/tiny-qwen2_vl"
    )
