"""A small OpenAI-compatible server that answers whatever its test tells it to, ignoring
`response_format` like the servers the bench must catch; optionally with a
`/v1/moderations` whose class scores the test chose."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from vlmserve.safety.policy import load_policy

FAKE_MODEL = "fake"
Answer = Callable[[dict[str, Any]], str]
Scores = Callable[[dict[str, Any]], tuple[str, dict[str, float]]]  # best class, scores


def image_sha256(body: dict[str, Any]) -> str:
    """The sha256 of the image bytes a chat or moderation request carries as a data URL."""
    parts = body["input"] if "input" in body else body["messages"][-1]["content"]
    for part in parts:
        if part.get("type") == "image_url":
            data = part["image_url"]["url"].split(",", 1)[1]
            return hashlib.sha256(base64.b64decode(data)).hexdigest()
    raise ValueError("no image in the request")


def answer_json(best_class: str, **fields: str) -> str:
    return json.dumps(
        {
            "best_class": best_class,
            "explanation": "",
            "extracted_text": "",
            "language": "",
            **fields,
        }
    )


def fake_app(
    answer: Answer, files: dict[str, bytes] | None = None, scores: Scores | None = None
) -> FastAPI:
    """`answer` gives the content of every chat answer; `files` are served at /files/NAME;
    `scores`, when given, answers /v1/moderations under the default policy."""
    app = FastAPI()
    app.state.bodies = []

    @app.get("/files/{name}")
    async def file(name: str) -> Response:
        if files is None or name not in files:
            return Response(status_code=404)
        return Response(files[name], media_type="application/octet-stream")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": FAKE_MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        app.state.bodies.append(body)
        content = answer(body)
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> JSONResponse:
        body = await request.json()
        app.state.bodies.append(body)
        if scores is None:
            return JSONResponse({"error": {"message": "no route", "code": None}}, 404)
        best, by_class = scores(body)
        policy = load_policy()
        flags = {
            c.name: c.threshold is not None and by_class[c.name] >= c.threshold
            for c in policy.classes
        }
        result = {
            "flagged": any(flags.values()),
            "categories": flags,
            "category_scores": by_class,
            "category_applied_input_types": {name: ["image"] for name in by_class},
            "vlmserve": {
                **json.loads(answer_json(best)),
                "extra": None,
                "policy": policy.name,
                "policy_hash": policy.hash,
                "finish_reason": "stop",
            },
        }
        return JSONResponse({"id": "modr-x", "model": body["model"], "results": [result]})

    return app
