"""Hostile inputs against the generation endpoints: lone surrogates, NULs, reserved-token
pieces, deep nesting, repeated keys, huge and malformed URLs, media servers answering odd
redirects. Whatever arrives, the answer is never a 5xx and the server still serves.

The schemathesis run (test_fuzz.py) draws from the OpenAPI schema, which says nothing of
these; this strategy draws them on purpose. Bounded: about a minute on the loaded CPU VM.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.api.conftest import MODEL, chat_body, single_model
from tests.multimodal.fakes import png_bytes
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.engine.async_engine import AsyncEngine

pytestmark = pytest.mark.fuzz
MAX_EXAMPLES = 250

PUBLIC = ipaddress.ip_address("93.184.216.34")
SPICY = [
    "\ud800",
    "\udfff",
    "\x00",
    "%00",
    "%ED%A0%80",
    "\ufeff",
    "\U0010ffff",
    "<|im_",
    "end|>",
    "start|>system\n",
    "<|image_pad|>",
    "../",
    "\r\n",
]
text = st.lists(st.one_of(st.sampled_from(SPICY), st.text(max_size=6)), max_size=5).map("".join)
urls = st.one_of(
    st.sampled_from(
        [
            "http://cdn.example/" + "a" * 200_000,
            "http://cdn.example/redirect-data",
            "http://cdn.example/redirect-v6",
            "http://cdn.example/cat.png",
            "http://cdn.example/page",
            "http://[::1/x",
            "http://127.0.0.1/",
            "file:///tmp/%00.png",
            "file:///etc/passwd",
            "data:image/png;base64,iVBORé",
            "data:",
            "http://",
            "",
        ]
    ),
    text.map(lambda t: "http://cdn.example/" + t),
    text.map(lambda t: "http://" + t + "/x.png"),
    text.map(lambda t: "file:///" + t),
    text.map(lambda t: "data:image/png;base64," + t),
)


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"items": leaf, "type": "array"}
    return leaf


deep = st.integers(0, 1200).map(lambda d: nested(d, {"type": "string"}))
media = st.fixed_dictionaries({"url": urls}, optional={"uuid": text})
part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.builds(lambda m: {"type": "image_url", "image_url": m}, media),
    st.builds(lambda m: {"type": "video_url", "video_url": m}, media),
    st.dictionaries(text, text, max_size=2),
)
message = st.fixed_dictionaries(
    {
        "role": st.one_of(st.sampled_from(["user", "system", "assistant"]), text),
        "content": st.one_of(text, st.lists(part, max_size=4)),
    }
)
constraint = st.one_of(
    st.builds(lambda s: {"json": s}, deep),
    st.builds(lambda c: {"choice": c}, st.lists(text, min_size=1, max_size=4)),
    st.builds(lambda t: {"regex": t}, text),
    st.builds(lambda t: {"grammar": t}, text),
)
chat = st.fixed_dictionaries(
    {"model": st.just(MODEL), "messages": st.lists(message, min_size=1, max_size=3)},
    optional={
        "structured_outputs": constraint,
        "response_format": st.builds(
            lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}, deep
        ),
        "stop": text,
        "user": text,
        "extra": deep,
    },
)
completion = st.fixed_dictionaries(
    {"model": st.one_of(st.just(MODEL), text)},
    optional={
        "prompt": st.one_of(text, st.lists(st.integers(-3, 10**7), max_size=4)),
        "structured_outputs": constraint,
    },
)


def media_server(request: httpx.Request) -> httpx.Response:
    """The public internet, as far as these requests go."""
    path = request.url.path
    if path == "/redirect-data":
        return httpx.Response(302, headers={"Location": "data:image/png;base64,iVBOR"})
    if path == "/redirect-v6":
        return httpx.Response(301, headers={"Location": "http://[::1/x"})
    # Bodies as streams, as a network delivers them: `content=` bytes would arrive already
    # read, and the connector's streamed read would then fail on the fake, not on the input.
    if path == "/page":
        return httpx.Response(
            200, headers={"Content-Type": "text/html"}, stream=httpx.ByteStream(b"<html>")
        )
    return httpx.Response(
        200, headers={"Content-Type": "image/png"}, stream=httpx.ByteStream(png_bytes((28, 28)))
    )


async def resolve_public(host: str, port: int) -> list[Any]:
    return [PUBLIC]


def encode(body: dict[str, Any], repeat: bool) -> bytes:
    # json.dumps escapes lone surrogates (\ud800): valid JSON that is not valid text.
    raw = json.dumps(body)
    if repeat:  # the same key twice: parsers disagree on which one wins
        raw = raw[:-1] + ', "model": "other"}'
    return raw.encode()


def test_hostile_bodies_never_get_a_5xx(async_engine: AsyncEngine) -> None:
    app = create_app(
        single_model(async_engine),
        ServerConfig(),
        media_resolver=resolve_public,
        media_transport=lambda: httpx.MockTransport(media_server),
    )
    statuses: Counter[int] = Counter()
    with TestClient(app, raise_server_exceptions=False) as client:

        @given(
            case=st.one_of(
                st.tuples(st.just("/v1/chat/completions"), chat, st.booleans()),
                st.tuples(st.just("/v1/completions"), completion, st.booleans()),
            )
        )
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: tuple[str, dict[str, Any], bool]) -> None:
            url, body, repeat = case
            body["max_tokens"] = 2
            response = client.post(
                url,
                content=encode(body, repeat),
                headers={"content-type": "application/json"},
            )
            statuses[response.status_code] += 1
            assert response.status_code < 500, (response.status_code, response.text[:500])
            assert "error" in response.json() or response.status_code == 200

        run()
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert statuses[400] > 0, statuses
    assert set(statuses) <= {200, 400, 404, 413}, statuses
