"""A prompt far longer than the context is refused from its length, before tokenizing; large
bodies are parsed and validated on the work pool, so neither freezes the server (issue 8,
finding 2)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import socket
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from tests.api.conftest import MODEL, assert_error, chat_body, make_app
from tests.api.live_server import live_server
from vlmserve.api.json_body import OFFLOAD_BYTES
from vlmserve.api.server_config import ServerConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.serving import prompts
from vlmserve.serving.work_pool import WorkPool

T = TypeVar("T")
# The issue's bound for /health is 0.5 s; these machines run at 10-15 times their cores' load.
LOADED_HEALTH_S = 1.5


async def test_a_16_mib_prompt_is_refused_at_once(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "a" * (16 << 20), "max_tokens": 1}
    start = time.monotonic()
    response = await client.post("/v1/completions", json=body)
    # Tokenizing it took a minute on a loaded 2-core machine before its 400 came.
    assert "characters" in assert_error(response, 400, "prompt")
    assert time.monotonic() - start < 10


class HealthProbe:
    """Probes /health every 20 ms while a test's requests run; `worst` is the slowest answer
    (the event loop is shared: a request that holds it shows here)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.worst = 0.0
        self.count = 0

    async def run(self, done: asyncio.Event) -> None:
        while not done.is_set():
            start = time.monotonic()
            assert (await self.client.get("/health")).status_code == 200
            self.worst = max(self.worst, time.monotonic() - start)
            self.count += 1
            await asyncio.sleep(0.02)

    async def during(self, work: Awaitable[T]) -> T:
        done = asyncio.Event()
        probe = asyncio.create_task(self.run(done))
        try:
            return await work
        finally:
            done.set()
            await probe


async def post_raw(client: httpx.AsyncClient, url: str, body: bytes) -> httpx.Response:
    return await client.post(url, content=body, headers={"content-type": "application/json"})


async def test_health_stays_fast_while_huge_prompts_are_refused(
    client: httpx.AsyncClient,
) -> None:
    # A reserved token at the end: its scan (0.6 s of event loop for 16 MiB on a loaded
    # machine) must not run before the length check refuses the prompt.
    bodies = [{"model": MODEL, "prompt": "a" * (16 << 20) + "<|image_pad|>", "max_tokens": 1}]
    bodies += [{"model": MODEL, "prompt": "b" * (4 << 20), "max_tokens": 1}] * 8
    encoded = [json.dumps(body).encode() for body in bodies]  # before the clock starts
    probe = HealthProbe(client)
    responses = await probe.during(
        asyncio.gather(*(post_raw(client, "/v1/completions", body) for body in encoded))
    )
    for response in responses:
        assert "characters" in assert_error(response, 400, "prompt")
    # Well under 0.5 s on a quiet machine; what is left is json.loads holding the GIL on the
    # pool's threads (48 MiB), which a machine loaded 15-fold stretches. Before, tokenizing
    # 16 MiB held /health for 20 s.
    assert probe.count > 0 and probe.worst < LOADED_HEALTH_S, probe.worst


def raw_completion(prompt: str) -> bytes:
    """A whole HTTP request for one socket write; `Connection: close` ends the answer."""
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def test_health_stays_fast_on_real_connections_while_huge_prompts_are_refused(
    async_engine: AsyncEngine,
) -> None:
    # The test above skips the HTTP protocol; here the 48 MiB cross loopback sockets and the
    # server's own parser, as in production (h11, parsing bodies in Python, delayed /health
    # by up to 0.68 s on a loaded machine; benchmarks/health_under_big_prompts.py).
    requests = [raw_completion("a" * (16 << 20))] + [raw_completion("b" * (4 << 20))] * 8
    answers: list[bytes] = []
    health: list[tuple[int, float]] = []
    done = threading.Event()

    with live_server(make_app(async_engine), ServerConfig()) as (host, port):

        def send(request: bytes) -> None:
            with socket.create_connection((host, port), timeout=60) as sock:
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                answers.append(answer)

        def probe() -> None:
            with httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as client:
                while not done.is_set():
                    start = time.monotonic()
                    status = client.get("/health").status_code
                    health.append((status, time.monotonic() - start))
                    done.wait(0.02)

        prober = threading.Thread(target=probe)
        senders = [threading.Thread(target=send, args=(request,)) for request in requests]
        prober.start()
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        done.set()
        prober.join()
    assert len(answers) == len(requests)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 400 ") and b"characters" in answer, answer[:300]
    assert health and all(status == 200 for status, _ in health), health
    worst = max(seconds for _, seconds in health)
    assert worst < LOADED_HEALTH_S, worst


async def test_400k_text_parts_do_not_stall_the_event_loop(client: httpx.AsyncClient) -> None:
    # 12 MB: validating 400k parts held the GIL (pydantic-core) for seconds, on the event loop
    # or not; the body's walk on the work pool refuses it after 50,000 objects instead.
    parts = [{"type": "text", "text": "a"}] * 400_000
    body = json.dumps(chat_body(parts, max_tokens=1)).encode()
    probe = HealthProbe(client)
    response = await probe.during(post_raw(client, "/v1/chat/completions", body))
    message = assert_error(response, 400)
    assert "more than 50000 objects" in message, message
    assert response.json()["error"]["param"].startswith("messages[0].content[")
    # Before: one stall of several seconds (the whole parse and validation on the loop).
    assert probe.count > 0 and probe.worst < LOADED_HEALTH_S, probe.worst


async def test_text_that_cannot_fit_is_refused_before_the_template(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def render(*args: object) -> None:
        raise AssertionError("the template was rendered")

    monkeypatch.setattr(prompts, "build_chat_prompt", render)
    parts = [{"type": "text", "text": "a" * 300}] * 40  # 12,000 characters, 1024 tokens
    response = await client.post("/v1/chat/completions", json=chat_body(parts, max_tokens=1))
    assert "12000 characters of text" in assert_error(response, 400, "messages")


async def test_a_large_body_validated_off_the_loop_answers_as_a_small_one(
    client: httpx.AsyncClient,
) -> None:
    noise = Image.frombytes("RGB", (320, 320), random.Random(0).randbytes(320 * 320 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    image = {"type": "image_url", "image_url": {"url": url}}
    assert len(url) > OFFLOAD_BYTES
    ok = await client.post("/v1/chat/completions", json=chat_body([image], max_tokens=1))
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["completion_tokens"] == 1
    # The same errors as on the loop, naming the field.
    bad = chat_body([image, {"type": "text", "text": 5}], max_tokens=1)
    assert_error(
        await client.post("/v1/chat/completions", json=bad), 400, "messages[0].content[1].text"
    )
    broken = json.dumps(chat_body([image])).encode()[:-1]
    assert_error(await post_raw(client, "/v1/chat/completions", broken), 400)
    twice = b'{"model": "tiny", "model": "tiny", "pad": "' + b"x" * OFFLOAD_BYTES + b'"}'
    assert_error(await post_raw(client, "/v1/chat/completions", twice), 400, "model")


async def test_a_full_work_pool_answers_503(app: FastAPI, client: httpx.AsyncClient) -> None:
    gate = threading.Event()
    pool = WorkPool(workers=1, max_queued=0)
    app.state.vlm.serving.work = pool
    try:
        held = asyncio.create_task(pool.run(gate.wait, 30))
        await asyncio.sleep(0)
        body = json.dumps(chat_body("a" * OFFLOAD_BYTES)).encode()
        response = await post_raw(client, "/v1/chat/completions", body)
        assert assert_error(response, 503).startswith("the server is busy")
        assert response.json()["error"]["code"] == "server_busy"
        assert response.headers["retry-after"] == "1"
    finally:
        gate.set()
        await held
        pool.close()
