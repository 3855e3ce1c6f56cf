"""Schemathesis fuzzing of our own /openapi.json, in-process: whatever the generated bodies,
no 5xx, answers match the documented schemas, and the server is healthy afterwards.

Bounded for CI: a few dozen examples per operation (about a minute in all on CPU).
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.api.conftest import MODEL, chat_body, client_for
from tests.api.test_lifecycle import wait_for_free_blocks
from vlmserve.engine.async_engine import AsyncEngine

pytestmark = pytest.mark.fuzz
MAX_EXAMPLES = 50


def _aim(case: schemathesis.Case, negative: bool) -> None:
    body = case.body
    if negative:
        # Any field may be the invalid part (the budget: a null where the mutated schema
        # wants none, a number past the limit; `model`: a boolean): setting it would make
        # the case valid, which schemathesis then fails as "schema-violating request
        # accepted" (seen in CI, for both). An invalid body is refused before it generates
        # anything, so it is sent as generated.
        return
    if isinstance(body, dict) and "model" in body:
        # Half the time aim at the served model, so generation runs too, not only the 404.
        if hash(repr(body)) % 2:
            body["model"] = MODEL
        # Keep generation short: the point is input handling, not long outputs. A body
        # without a budget would generate until the context is full (~1000 tokens here),
        # longer than the 10 s read timeout on a loaded 2-core machine.
        fields = ("max_tokens", "max_completion_tokens")
        if case.operation.path == "/v1/responses":
            fields = ("max_output_tokens",)
        for field in fields:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 4:
                body[field] = 4
        if all(body.get(field) is None for field in fields):
            body[fields[0]] = 4


def test_fuzz_openapi(app: FastAPI) -> None:
    # Driven by hand rather than through schemathesis' pytest plugin, which does not
    # support this pytest version's fixture handling.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    statuses: Counter[int] = Counter()
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            # run() is called right below, within this iteration: `mode` is this one's.
            _aim(case, negative=mode is schemathesis.GenerationMode.NEGATIVE)  # noqa: B023
            # Schema-valid bodies may still be refused (unknown model, video input, field
            # combinations): semantic 4xx are the point, so only that check is left out.
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            statuses[response.status_code] += 1

        if mode is schemathesis.GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to make invalid (GET without parameters)
        run()
    # Both the happy path and the rejections were exercised, and nothing else (403: model
    # administration is off without an admin key; tests/api/test_admin.py fuzzes it on).
    assert statuses[200] > 0 and statuses[400] > 0, statuses
    assert set(statuses) <= {200, 400, 401, 403, 404, 405, 413, 429}, statuses


async def test_healthy_after_fuzzing(app: FastAPI, async_engine: AsyncEngine) -> None:
    async with client_for(app) as client:
        assert (await client.get("/ready")).status_code == 200
        response = await client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200, response.text
    await wait_for_free_blocks(async_engine, async_engine.engine.block_manager.num_blocks - 1)
