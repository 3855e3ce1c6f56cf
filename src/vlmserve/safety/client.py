"""Talking to an OpenAI-compatible server over HTTP (ours, vLLM, anything): the chat body a
policy asks for, one exchange timed (total and, when streaming, time to first token) with the
raw content exactly as received, the model list, and the loopback rule for load generators."""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from vlmserve.safety.policy import Policy

SCHEMA_NAME = "content_safety"


def data_url(image_bytes: bytes) -> str:
    """A data URL with the MIME type Pillow recognises in the bytes (ValueError if none)."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            mime = Image.MIME.get(image.format or "")
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not an image Pillow can read: {exc}") from None
    if mime is None:
        raise ValueError("image format without a MIME type")
    return f"data:{mime};base64,{base64.b64encode(image_bytes).decode()}"


def chat_body(
    policy: Policy,
    model: str,
    image_url: str,
    *,
    constrained: bool,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
    extra_text: str | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """The request that classifies one image under `policy`. `constrained` adds the policy's
    strict schema as `response_format`; `extra_text` follows the policy's user prompt (the
    bench's adversarial instructions)."""
    image = {"type": "image_url", "image_url": {"url": image_url}}
    body: dict[str, Any] = {
        "model": model,
        "messages": policy.messages([image], extra_text),
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    if seed is not None:
        body["seed"] = seed
    if constrained:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": policy.output_schema()},
        }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class Exchange:
    """One request's outcome. `error` is set when no answer came (transport failure, a
    non-200 status, a body that is not a chat completion); `content` is then None."""

    status: int | None
    content: str | None
    finish_reason: str | None
    latency_s: float
    ttft_s: float | None = None  # first content token, streaming only
    completion_tokens: int | None = None
    error: str | None = None


async def send_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> Exchange:
    start = time.perf_counter()
    try:
        if body.get("stream"):
            return await _send_stream(client, body, start)
        response = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return Exchange(None, None, None, time.perf_counter() - start, error=f"transport: {exc!r}")
    latency = time.perf_counter() - start
    if response.status_code != 200:
        return Exchange(response.status_code, None, None, latency, error=_http_error(response))
    try:
        payload = response.json()
        choice = payload["choices"][0]
        content = choice["message"]["content"]
        usage = payload.get("usage") or {}
        return Exchange(
            200,
            content,
            choice.get("finish_reason"),
            latency,
            completion_tokens=usage.get("completion_tokens"),
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Exchange(200, None, None, latency, error=f"not a chat completion: {exc!r}")


async def _send_stream(client: httpx.AsyncClient, body: dict[str, Any], start: float) -> Exchange:
    parts: list[str] = []
    ttft = finish = tokens = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Exchange(
                response.status_code,
                None,
                None,
                time.perf_counter() - start,
                error=_http_error(response),
            )
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                return Exchange(
                    200,
                    None,
                    None,
                    time.perf_counter() - start,
                    error=f"stream chunk is not JSON: {data[:100]!r}",
                )
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(delta)
                finish = choice.get("finish_reason") or finish
    return Exchange(200, "".join(parts), finish, time.perf_counter() - start, ttft, tokens)


def _http_error(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"HTTP {response.status_code}: {message}"


async def first_model(client: httpx.AsyncClient) -> str:
    """The first model the server lists (for commands where `--model` is optional)."""
    try:
        response = await client.get("/v1/models")
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise RuntimeError(f"cannot reach --base-url {client.base_url}: {reason}") from None
    if response.status_code != 200:
        raise RuntimeError(f"GET /v1/models: {_http_error(response)}")
    models = response.json().get("data") or []
    if not models:
        raise RuntimeError("GET /v1/models lists no model; pass --model")
    return str(models[0]["id"])


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_root(base_url: str) -> str:
    """`http://host:port/v1` (the OpenAI clients' convention) or `http://host:port`, either
    way without the `/v1`: request paths carry it."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def http_client(
    base_url: str, api_key: str | None, timeout: float, connections: int
) -> httpx.AsyncClient:
    """A client whose pool holds at most `connections`: the load stays bounded."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=server_root(base_url),
        headers=headers,
        timeout=timeout,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
