"""A real `vlmserve serve` process: the start-up summary and the refusals in its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.children import spawn
from vlmserve.models.quantize import int8_available


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready after {timeout} s")


def test_startup_summary_and_refusals(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    command = [
        sys.executable,
        "-m",
        "vlmserve.cli",
        "serve",
        str(tiny_qwen2_vl),
        "--served-model-name",
        "tiny",
        "--port",
        str(port),
        "--api-key",
        "k",
        "--allowed-media-domains",
        "img.example.com",
        "--max-num-seqs",
        "2",
        "--max-model-len",
        "32768",
        "--cpu-threads",
        "1",
        # int8 where this CPU's int8 GEMMs are exact (elsewhere it is refused: test_quantize).
        "--quantization",
        "int8" if int8_available() else "none",
    ]
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = spawn(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
    try:
        wait_ready(base, process)
        headers = {"Authorization": "Bearer k"}
        bad = httpx.post(f"{base}/v1/chat/completions", json={"model": "tiny"}, headers=headers)
        assert bad.status_code == 400
        assert httpx.get(f"{base}/v1/models").status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    text = log.read_text()
    lines = text.splitlines()

    def line(needle: str) -> str:
        found = [entry for entry in lines if needle in entry]
        assert len(found) == 1, (needle, text)
        return found[0]

    model = line("vlmserve.server: model 'tiny' from ")
    assert "Qwen2-VL, 2.0 M parameters, " in model and " on cpu, 1 torch thread" in model
    assert (" with int8 decoder GEMMs (--quantization) on cpu" in model) == int8_available()
    kv = line("vlmserve.server: KV cache ")
    assert "sized by --max-num-seqs 2 × 4096 tokens, at least one --max-model-len of 32768" in kv
    assert (
        "context: --max-model-len 32768; batches: up to --max-num-seqs 2 sequences, "
        "--max-num-batched-tokens 2048 tokens per step; prefix caching on" in text
    )
    security = line("vlmserve.server: security: ")
    assert security.endswith(
        "API key on, /metrics open; media: img.example.com on ports 80,443, private "
        "addresses refused, no redirects, file: URLs off"
    )
    line(f"vlmserve.server: listening on {base} (OpenAI API under /v1")
    # uvicorn's lines share the format (time, level, logger) instead of uvicorn's own.
    assert " INFO    uvicorn.error: " in line("Application startup complete")
    access = line("vlmserve.access: POST /v1/chat/completions 400 ")
    request_id = access.rsplit(" id ", 1)[1]
    refused = line("refused with 400: ")
    assert refused.endswith(f"'messages' is required (param: messages) [request {request_id}]")
    assert "refused with 401: " in text
    assert "Traceback" not in text
