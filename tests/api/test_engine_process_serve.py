"""`vlmserve serve --engine-process` as real processes: the engine process logs like the
server (its setup ran), SIGTERM drains the requests in flight and both processes exit, and
an engine process killed by PID ends the open stream with an error event while /ready turns
503 and /health keeps answering."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.api.serve_process import Served, serve

BOUND_S = 120
FLAGS = ["--served-model-name", "tiny", "--engine-process", "--log-format", "json"]


def chat(**fields: Any) -> dict[str, Any]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}
    return {**body, "temperature": 0, "max_tokens": 400, "ignore_eos": True, **fields}


def engine_pid(server: Served) -> int:
    found = re.findall(r"engine process pid (\d+) built", server.log.read_text())
    assert found, server.log.read_text()
    pid = int(found[-1])
    assert pid in {p.pid for p in psutil.Process(server.process.pid).children()}
    return pid


async def wait_running(client: httpx.AsyncClient, count: int) -> None:
    deadline = time.monotonic() + BOUND_S
    needle = f'vlmserve_num_requests_running{{model="tiny"}} {count}.0'
    while needle not in (await client.get("/metrics")).text:
        assert time.monotonic() < deadline, "the requests never ran together"
        await asyncio.sleep(0.05)


def test_sigterm_drains_the_engine_process(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    async def scenario(server: Served) -> None:
        async with httpx.AsyncClient(base_url=server.base, timeout=BOUND_S) as client:
            kinds = [False, True, False]
            requests = [
                asyncio.create_task(
                    client.post("/v1/chat/completions", json=chat(stream=s, max_tokens=300))
                )
                for s in kinds
            ]
            await wait_running(client, 3)
            server.send(signal.SIGTERM)
            responses = await asyncio.gather(*requests)
        for response, stream in zip(responses, kinds, strict=True):
            assert response.status_code == 200, response.text
            if stream:
                assert response.text.rstrip().endswith("data: [DONE]")
            else:
                assert response.json()["usage"]["completion_tokens"] == 300

    with serve(tiny_qwen2_vl, tmp_path, *FLAGS) as server:
        pid = engine_pid(server)
        asyncio.run(scenario(server))
        assert server.exit_status(timeout=60) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    # The start-up summary is logged by the engine process, through the server's logging.
    assert any(e["message"].startswith("KV cache ") for e in lines)
    assert any("engine process pid" in e["message"] and "ended" in e["message"] for e in lines)


def test_a_killed_engine_process_ends_the_open_stream(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    async def scenario(server: Served, pid: int) -> None:
        async with httpx.AsyncClient(base_url=server.base, timeout=BOUND_S) as client:
            async with client.stream(
                "POST", "/v1/chat/completions", json=chat(stream=True)
            ) as stream:
                lines = aiter(stream.aiter_lines())
                first = await anext(lines)
                assert first.startswith("data: "), first
                os.kill(pid, signal.SIGKILL)
                rest = [line async for line in lines]
            errors = [line for line in rest if line.startswith("data: ") and "error" in line]
            assert errors and "SIGKILL" in errors[-1], rest[-5:]
            deadline = time.monotonic() + BOUND_S
            while (ready := await client.get("/ready")).status_code != 503:
                assert time.monotonic() < deadline, ready.text
                await asyncio.sleep(0.05)
            start = time.monotonic()
            assert (await client.get("/health")).status_code == 200
            assert time.monotonic() - start < 5

    with serve(tiny_qwen2_vl, tmp_path, *FLAGS) as server:
        asyncio.run(scenario(server, engine_pid(server)))
        server.send(signal.SIGTERM)
        assert server.exit_status(timeout=60) == 0
