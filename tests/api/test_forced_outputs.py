"""Requests whose whole output a grammar forces at admission, over HTTP: they are answered,
and they leave the server able to serve the next request (they once wedged it for good)."""

from __future__ import annotations

import asyncio

import httpx

from tests.api.conftest import chat_body

CHAT = "/v1/chat/completions"


async def test_one_option_choices_do_not_wedge_the_server(client: httpx.AsyncClient) -> None:
    forced = chat_body(n=16, structured_outputs={"choice": ["yes"]})
    # Both at once: together they hold every sequence slot the engine has (32).
    answers = await asyncio.gather(*(client.post(CHAT, json=forced) for _ in range(2)))
    for response in answers:
        assert response.status_code == 200, response.text
        choices = response.json()["choices"]
        assert [c["message"]["content"] for c in choices] == ["yes"] * 16
    plain = await asyncio.wait_for(client.post(CHAT, json=chat_body(max_tokens=4)), 60)
    assert plain.status_code == 200, plain.text
