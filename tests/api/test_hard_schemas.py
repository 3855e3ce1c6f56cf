"""Constraints that are expensive to compile cannot hold the server: a compile past its
deadline is a 400 naming the field, the same constraint again is refused at once, and a
flood of them runs on the grammar pool, which refuses what it cannot queue (429) while
other requests go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import assert_error, chat_body, client_for, make_app
from tests.structured.test_compile_limits import wide_object
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine

CHAT = "/v1/chat/completions"
SLACK_S = 10.0  # a loaded 2-core CI machine


def constrained(schema: dict[str, object]) -> dict[str, object]:
    return chat_body(structured_outputs={"json": schema})


async def test_a_huge_schema_is_refused_by_the_deadline_then_at_once(
    client: httpx.AsyncClient, async_engine: AsyncEngine
) -> None:
    deadline = async_engine.engine.config.grammar_compile_timeout
    assert deadline is not None
    start = time.monotonic()
    response = await client.post(CHAT, json=constrained(wide_object(3000)))
    first = time.monotonic() - start
    message = assert_error(response, 400, "structured_outputs.json")
    assert "deadline" in message and first < deadline + SLACK_S
    start = time.monotonic()
    again = await client.post(CHAT, json=constrained(wide_object(3000)))
    assert assert_error(again, 400, "structured_outputs.json") == message
    assert time.monotonic() - start < 1.0


@pytest.fixture(scope="module")
def quick_deadline_engine(tiny_qwen2_vl: Path) -> Iterator[AsyncEngine]:
    config = EngineConfig(
        str(tiny_qwen2_vl),
        max_model_len=512,
        grammar_compile_timeout=1.0,
        grammar_compile_workers=2,
        max_pending_grammar_compiles=4,
    )
    engine = AsyncEngine(build_engine(config)).start()
    yield engine
    engine.close()


async def test_a_compile_flood_does_not_starve_other_requests(
    quick_deadline_engine: AsyncEngine,
) -> None:
    async with client_for(make_app(quick_deadline_engine)) as client:
        # Warm: the grammar backend is built, and this constraint is in the cache.
        cached = chat_body(max_tokens=4, structured_outputs={"choice": ["a", "b"]})
        assert (await client.post(CHAT, json=cached)).status_code == 200
        # Distinct schemas: neither the failure cache nor sharing a compile helps them.
        hard = [
            asyncio.create_task(client.post(CHAT, json=constrained(wide_object(1000, f"k{i}_"))))
            for i in range(8)
        ]
        await asyncio.sleep(0.2)  # let them reach the grammar pool
        start = time.monotonic()
        plain = await client.post(CHAT, json=chat_body(max_tokens=4))
        again = await client.post(CHAT, json=cached)
        elapsed = time.monotonic() - start
        assert plain.status_code == 200 and again.status_code == 200
        statuses = [r.status_code for r in await asyncio.gather(*hard)]
    # Four fit the pool (two compiling, two queued), each refused by its 1 s deadline; the
    # others are refused at once (more may fit if a compile ended before they arrived).
    assert set(statuses) == {400, 429} and statuses.count(400) >= 4, statuses
    assert elapsed < SLACK_S
