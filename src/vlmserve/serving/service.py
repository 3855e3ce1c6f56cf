"""`Serving`: the transport-free entry points for answering generation requests, shared by
the HTTP API, the content-safety app and a Ray replica.

    async with serving.model(alias) as handle:          # registry: 404 / 503 as ServingError
        generation = await serving.start_chat(handle, ChatRequest(messages, params))
        final = await generation.final()                 # or: async for out in generation.outputs()

Apps that need one prompt for several engine requests (the safety app scores classes, then
generates) render it once with `chat_prompt` and pass it to `score` and `start_generation`.

Requests are plain dataclasses (already-validated sampling parameters, OpenAI-style messages
as dicts); every refusal is a `ServingError`. Shaping the answer is the caller's job.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vlmserve.engine.errors import EngineOverloaded, EngineUnavailable
from vlmserve.registry import ModelHandle, ModelRegistry, RegistryError
from vlmserve.serving.errors import ServingError, engine_error, registry_error
from vlmserve.serving.generation import Generation, OutputObserver
from vlmserve.serving.media import MediaLoader
from vlmserve.serving.prompts import chat_prompt, completion_prompt
from vlmserve.serving.scoring import ScoreRequest, score_continuations
from vlmserve.serving.tools import Tools
from vlmserve.serving.work_pool import WorkPool
from vlmserve.trace import current_trace
from vlmserve.types import Prompt, RequestOutput, SamplingParams


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]  # OpenAI-style; content parts as dicts
    params: SamplingParams
    request_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    add_generation_prompt: bool = True
    cache_salt: str | None = None  # shares prefix cache and media UUIDs only with equal salts
    tools: Tools | None = None  # offered tools and the tool choice (serving/tools.py)


@dataclass
class CompletionRequest:
    prompt: str | list[int]  # text, or token ids
    params: SamplingParams
    request_id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    cache_salt: str | None = None


class Serving:
    def __init__(
        self, models: ModelRegistry, media: MediaLoader, work: WorkPool | None = None
    ) -> None:
        """`work`: where long chat templates are rendered (None: on the caller's loop)."""
        self.models = models
        self.media = media
        self.work = work

    @contextlib.asynccontextmanager
    async def model(
        self, alias: str, keep_alive: float | None = None
    ) -> AsyncIterator[ModelHandle]:
        """The registry's `acquire` (loading the model if needed; `keep_alive` seconds
        overrides its idle time after this request), its refusals as `ServingError`s
        (unknown model: 404 `model_not_found`; not available now: 503 with Retry-After)."""
        trace = current_trace()
        if trace is not None:
            trace.model = alias
        try:
            async with self.models.acquire(alias, keep_alive) as handle:
                yield handle
        except RegistryError as exc:
            raise registry_error(exc) from exc

    async def start_chat(
        self, handle: ModelHandle, request: ChatRequest, observe: OutputObserver | None = None
    ) -> Generation:
        """Template, reserved-token and media-count checks, media loading, then the engine
        request, started: its first output is in (see `Generation`). A place in the engine
        (--max-waiting) is held from before the media is loaded: a flood gets 429 before
        anything is fetched or decoded. With `tools` the output is constrained to the tool
        choice; reading the calls out of it is the caller's (`parse_output`, `ToolCallStream`
        in serving/tool_calls.py)."""
        params, definitions = request.params, None
        if request.tools is not None:
            params = request.tools.constrain(params)
            definitions = request.tools.definitions
        try:
            with handle.engine.reserve():
                prompt = await chat_prompt(
                    handle.info,
                    request.messages,
                    self.media,
                    request.add_generation_prompt,
                    self.work,
                    definitions,
                )
        except (EngineOverloaded, EngineUnavailable) as exc:
            raise _refusal(exc) from exc
        # No await between leaving the reservation and `generate` taking its own place.
        prompt.cache_salt = request.cache_salt
        return await _started(
            Generation(handle.engine, prompt, params, request.request_id, observe)
        )

    async def start_completion(
        self,
        handle: ModelHandle,
        request: CompletionRequest,
        observe: OutputObserver | None = None,
    ) -> Generation:
        prompt = completion_prompt(handle.info, request.prompt)
        prompt.cache_salt = request.cache_salt
        return await _started(
            Generation(handle.engine, prompt, request.params, request.request_id, observe)
        )

    async def chat_prompt(
        self,
        handle: ModelHandle,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        cache_salt: str | None = None,
    ) -> Prompt:
        """`messages` through the model's template, with the checks of `start_chat` and the
        media fetched and decoded: a prompt to reuse across engine requests (which share
        prefix cache and media UUIDs only with requests of the same `cache_salt`)."""
        prompt = await chat_prompt(
            handle.info, messages, self.media, add_generation_prompt, self.work
        )
        prompt.cache_salt = cache_salt
        return prompt

    async def start_generation(
        self,
        handle: ModelHandle,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        observe: OutputObserver | None = None,
    ) -> Generation:
        """A generation from a prompt already rendered (`chat_prompt`), started."""
        request_id = request_id or f"gen-{uuid.uuid4().hex}"
        return await _started(Generation(handle.engine, prompt, params, request_id, observe))

    async def score(self, handle: ModelHandle, request: ScoreRequest) -> RequestOutput:
        """The log-probability of each continuation after the prompt, from raw logits
        (serving/scoring.py)."""
        return await score_continuations(handle, request)

    async def chat(self, alias: str, request: ChatRequest) -> RequestOutput:
        """The whole answer to a chat request, for callers that do not stream."""
        async with self.model(alias) as handle:
            generation = await self.start_chat(handle, request)
            return await generation.final()

    async def completion(self, alias: str, request: CompletionRequest) -> RequestOutput:
        async with self.model(alias) as handle:
            generation = await self.start_completion(handle, request)
            return await generation.final()


def _refusal(exc: Exception) -> ServingError:
    mapped = engine_error(exc)
    assert mapped is not None  # every engine refusal has a status
    return mapped


async def _started(generation: Generation) -> Generation:
    await generation.start()
    return generation
