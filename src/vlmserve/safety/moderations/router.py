"""The `/v1/moderations` route: parse, count images before anything is fetched, classify each
input through `Moderator` (all of a request's inputs at once; one failure fails the
request, the others are aborted), shape OpenAI's answer. Errors are the API's error bodies
with the field named as the client wrote it (`input[1].image_url.url`, not the chat
message the input became)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request

from vlmserve.api.auth import request_tenant, require_api_key
from vlmserve.api.errors import ERROR_RESPONSES
from vlmserve.api.state import get_state
from vlmserve.api.tenants import cache_salt
from vlmserve.registry import ModelStatus
from vlmserve.safety.moderations.protocol import (
    ModerationRequest,
    ModerationResponse,
    ModerationResult,
    VlmserveResult,
)
from vlmserve.safety.moderator import ModerationOptions, Moderator, Verdict
from vlmserve.safety.policy import Policy
from vlmserve.serving import ClientDisconnected, ServingError

DISCONNECT_POLL_S = 0.2
_CONTENT = "messages[1].content["  # where the input's parts sit in the policy's chat

T = TypeVar("T")


class _Input:
    """One input to classify: its content parts and the request field it came from."""

    def __init__(self, parts: list[dict[str, Any]], param: str, multimodal: bool) -> None:
        self.parts = parts
        self.param = param
        self.multimodal = multimodal  # a list of parts: errors name the part
        kinds: tuple[Literal["text", "image"], ...] = ("text", "image")
        self.types = [t for t in kinds if any(_kind(p) == t for p in parts)]

    def client_param(self, param: str | None) -> str | None:
        """A serving-layer field (of the chat the input became) as the client wrote it."""
        if param is None or param == "model":
            return param
        if param == "max_tokens":
            return "vlmserve.max_tokens"
        if self.multimodal and param.startswith(_CONTENT):
            index, _, rest = param[len(_CONTENT) :].partition("]")
            return f"{self.param}[{index}]{rest}"
        return self.param

    def refusal(self, error: ServingError) -> ServingError:
        param = self.client_param(error.param)
        message = error.message
        if error.param and param != error.param:
            message = message.replace(error.param, str(param))
        return ServingError(error.status, message, param, error.code, error.headers)


def _kind(part: dict[str, Any]) -> str:
    return "image" if part["type"] == "image_url" else "text"


def _inputs(body: ModerationRequest, max_images: int) -> list[_Input]:
    if isinstance(body.input, str):
        return [_Input([{"type": "text", "text": body.input}], "input", False)]
    if all(isinstance(item, str) for item in body.input):
        return [
            _Input([{"type": "text", "text": text}], f"input[{i}]", False)
            for i, text in enumerate(body.input)
        ]
    parts = [item.model_dump() for item in body.input if not isinstance(item, str)]
    images = sum(1 for part in parts if part["type"] == "image_url")
    if images > max_images:
        raise ServingError(
            400,
            f"{images} images in one input; this server moderates at most {max_images} "
            "(--moderation-max-images)",
            "input",
            code="too_many_images",
        )
    return [_Input(parts, "input", True)]


async def _all_or_nothing(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result, or the first failure with the others cancelled (their engine requests
    aborted): a request never answers with part of its inputs."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _unless_disconnected(
    work: Awaitable[T], is_disconnected: Callable[[], Awaitable[bool]]
) -> T:
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await is_disconnected():
                raise ClientDisconnected()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _result(verdict: Verdict, policy: Policy, item: _Input) -> ModerationResult:
    answer = verdict.answer
    return ModerationResult(
        flagged=verdict.flagged,
        categories=verdict.categories,
        category_scores=verdict.scores,
        category_applied_input_types={name: list(item.types) for name in policy.class_names},
        vlmserve=VlmserveResult(
            best_class=verdict.best_class,
            explanation=answer["explanation"],
            extracted_text=answer["extracted_text"],
            language=answer["language"],
            extra=verdict.extra or None,
            policy=policy.name,
            policy_hash=policy.hash,
            finish_reason=verdict.finish_reason,
        ),
    )


def _default_model(served: list[ModelStatus]) -> str:
    """The model a request without `model` is classified with: the first pinned one (the
    command line's, always loaded), not whichever registration happens to be listed first
    (that could be a large model loaded on demand, or a broken one)."""
    if not served:
        raise ServingError(404, "this server serves no model", "model", "model_not_found")
    return next((s for s in served if s.pinned), served[0]).alias


def moderation_router(policy: Policy, max_images: int = 1) -> APIRouter:
    """The route, classifying under `policy`, with at most `max_images` images per input."""
    if max_images < 1:
        raise ValueError(f"--moderation-max-images must be at least 1, got {max_images}")
    router = APIRouter(dependencies=[Depends(require_api_key)])

    @router.post("/v1/moderations", response_model=ModerationResponse, responses=ERROR_RESPONSES)
    async def create_moderation(body: ModerationRequest, request: Request) -> ModerationResponse:
        state = get_state(request)
        items = _inputs(body, max_images)  # refused before the model is acquired
        extension = body.vlmserve
        options = (
            ModerationOptions()
            if extension is None
            else ModerationOptions(
                max_tokens=extension.max_tokens or ModerationOptions.max_tokens,
                temperature=extension.temperature,
                seed=extension.seed,
            )
        )
        alias = body.model or _default_model(state.models.list())
        moderator = Moderator(state.serving, policy)
        salt = cache_salt(request_tenant(request), None)  # a tenant's cache is its own
        async with state.serving.model(alias) as handle:

            async def one(item: _Input) -> Verdict:
                try:
                    return await moderator.moderate(handle, item.parts, options, salt)
                except ServingError as exc:
                    raise item.refusal(exc) from exc

            work = _all_or_nothing([one(item) for item in items])
            verdicts = await _unless_disconnected(work, request.is_disconnected)
            name = handle.info.name
        return ModerationResponse(
            id=f"modr-{uuid.uuid4().hex}",
            model=name,
            results=[_result(v, policy, item) for v, item in zip(verdicts, items, strict=True)],
        )

    return router
