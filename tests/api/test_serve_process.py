"""Real `vlmserve serve` processes, where sockets, signals and memory matter: the port is
bound before any model loads (a busy port is found at once), a registration answered 201
survives `kill -9`, and an idle model's memory goes back to the operating system."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.children import spawn

ADMIN = {"Authorization": "Bearer adm"}
START_S = 180  # a cold start on a loaded 2-core machine
KV_BYTES = 256 * 1024 * 1024  # dwarfs the interpreter's own noise in RSS


class Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = spawn(
                [sys.executable, "-m", "vlmserve.cli", "serve", *args, "--cpu-threads", "1"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        self.base = ""

    def text(self) -> str:
        return self.log.read_text()

    def wait_listening(self) -> str:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            found = re.findall(r"listening on (http://127\.0\.0\.1:\d+)", self.text())
            if found:
                self.base = found[-1]
                return self.base
            assert self.popen.poll() is None, self.text()
            time.sleep(0.02)
        raise AssertionError(f"never listened:\n{self.text()}")

    def wait_ready(self) -> list[httpx.Response]:
        """Polls /ready until 200; every answer before it."""
        answers = []
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.base}/ready", timeout=10)
            answers.append(response)
            if response.status_code == 200:
                return answers
            time.sleep(0.05)
        raise AssertionError(f"not ready:\n{self.text()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def test_the_port_is_bound_before_the_model_loads(
    tiny_qwen2_vl: Path, tmp_path: Path, processes: list[Process]
) -> None:
    server = Process([str(tiny_qwen2_vl), "--served-model-name", "tiny", "--port", "0"],
                     tmp_path / "serve.log")  # fmt: skip
    processes.append(server)
    base = server.wait_listening()
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200  # alive at once
    answers = server.wait_ready()
    for early in answers[:-1]:  # while it loaded, /ready said so and named the model
        assert early.status_code == 503
        assert early.json()["error"]["message"].startswith("model 'tiny' is loading (")
    text = server.text()
    assert text.index("listening on ") < text.index("model 'tiny': weights loaded in ")
    assert "model 'tiny': warm-up generation in " in text and "Traceback" not in text

    # The same port again: refused before any model is loaded, one line, status 2.
    port = base.rsplit(":", 1)[1]
    second = Process([str(tiny_qwen2_vl), "--port", port], tmp_path / "second.log")
    processes.append(second)
    assert second.popen.wait(timeout=START_S) == 2
    text = second.text()
    assert f"vlmserve serve: error: cannot listen on 127.0.0.1:{port} (--host, --port): " in text
    assert "loading" not in text and "Traceback" not in text


def test_a_registration_survives_kill_9_and_an_idle_model_frees_its_memory(
    tiny_qwen2_vl: Path, tmp_path: Path, processes: list[Process]
) -> None:
    registry = tmp_path / "models.db"
    args = [str(tiny_qwen2_vl), "--served-model-name", "main", "--port", "0",
            "--admin-api-key", "adm", "--registry", str(registry)]  # fmt: skip
    first = Process(args, tmp_path / "first.log")
    processes.append(first)
    base = first.wait_listening()
    registration = {
        "alias": "big",
        "model_name": str(tiny_qwen2_vl),
        "max_model_len": 256,
        "kv_cache_memory_bytes": KV_BYTES,
        "keep_alive": "1s",
    }
    created = httpx.post(f"{base}/v1/models/register", json=registration, headers=ADMIN)
    assert created.status_code == 201, created.text
    first.popen.send_signal(signal.SIGKILL)  # right after the 201: no shutdown at all
    first.popen.wait(timeout=30)

    second = Process(args, tmp_path / "second.log")
    processes.append(second)
    base = second.wait_listening()
    second.wait_ready()
    cards = {m["id"]: m for m in httpx.get(f"{base}/v1/models").json()["data"]}
    assert cards["big"]["state"] == "registered" and cards["big"]["revision"] == 1
    assert cards["main"]["state"] == "ready"

    # Idle unload: the keep-alive counts from the end of the request; the memory measured
    # at the load leaves the process within 5 s.
    server = psutil.Process(second.popen.pid)
    body = {"model": "big", "prompt": "Hello", "max_tokens": 4}
    assert httpx.post(f"{base}/v1/completions", json=body, timeout=START_S).status_code == 200
    finished = time.monotonic()
    loaded_rss = server.memory_info().rss
    card = httpx.get(f"{base}/v1/models/big").json()
    assert card["state"] == "ready" and card["memory_bytes"] >= KV_BYTES
    lowest = loaded_rss
    while time.monotonic() - finished < 5:
        lowest = min(lowest, server.memory_info().rss)
        if loaded_rss - lowest >= 0.8 * card["memory_bytes"]:
            break
        time.sleep(0.05)
    assert loaded_rss - lowest >= 0.8 * card["memory_bytes"], (loaded_rss, lowest, card)
    for _ in range(200):  # the memory is back; the unload finishes its bookkeeping
        if httpx.get(f"{base}/v1/models/big").json()["state"] == "registered":
            break
        time.sleep(0.05)
    assert httpx.get(f"{base}/v1/models/big").json()["state"] == "registered"
    assert "model 'big': idle for 1 s (keep_alive)" in second.text()
