"""Where `classify` and `eval` get their answers, one image at a time:

- `LocalBackend`: an engine in this process, through the public serving layer (no server);
  the answer and the class scores come from `Moderator` (scoring pass, then the answer).
- `ModerationsBackend`: a vlmserve server's `POST /v1/moderations`: the same, over HTTP; the
  server must moderate under the same policy (its hash is checked on every answer).
- `ChatBackend`: `POST /v1/chat/completions` of any OpenAI-compatible server with the
  policy's strict schema: answers, no class scores.

Every backend answers with a `Judgement`; what went wrong is in it, never raised, except a
server whose policy differs from ours (`PolicyMismatch`): that is no per-item failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.safety.answers import check_answer
from vlmserve.safety.client import chat_body, first_model, http_client, send_chat
from vlmserve.safety.meta import server_facts
from vlmserve.safety.moderator import ModerationError, ModerationOptions, Moderator
from vlmserve.safety.policy import STANDARD_FIELDS, Policy
from vlmserve.safety.sources import MAX_IMAGE_BYTES
from vlmserve.serving import Serving, ServingError

APIS = ("moderations", "chat")
DRAIN_S = 30.0


class PolicyMismatch(RuntimeError):
    """The server moderates under another policy than the one given to the command."""


@dataclass(frozen=True)
class Judgement:
    answer: dict[str, Any] | None  # the valid answer, if one came
    scores: list[float] | None  # the policy's class scores, in class order
    finish_reason: str | None = None
    problem: str | None = None  # why there is no valid answer
    error: bool = False  # no answer came at all (transport, status, refusal)

    @property
    def best_class(self) -> str | None:
        return None if self.answer is None else str(self.answer["best_class"])


class Backend(Protocol):
    model: str  # the name results are recorded under
    where: str  # for reports: the server or the in-process engine
    scored: bool  # whether judgements carry class scores

    async def judge(self, image_url: str, seed: int | None) -> Judgement: ...


@dataclass(frozen=True)
class BackendSettings:
    base_url: str | None  # None: an engine in this process
    api: str = "moderations"  # over HTTP: "moderations" or "chat"
    model: str | None = None  # to send (HTTP) or to load (in process); None: the default
    api_key: str | None = None
    timeout: float = 300.0
    connections: int = 4
    max_tokens: int = 256
    temperature: float = 0.0


class ChatBackend:
    scored = False

    def __init__(
        self, client: httpx.AsyncClient, policy: Policy, model: str, s: BackendSettings
    ) -> None:
        self.client, self.policy, self.model, self.settings = client, policy, model, s
        self.where = f"{s.base_url} (/v1/chat/completions)"

    async def judge(self, image_url: str, seed: int | None) -> Judgement:
        s = self.settings
        body = chat_body(
            self.policy,
            self.model,
            image_url,
            constrained=True,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            seed=seed,
        )
        exchange = await send_chat(self.client, body)
        if exchange.error is not None:
            return Judgement(None, None, problem=exchange.error, error=True)
        check = check_answer(exchange.content, self.policy)
        return Judgement(check.answer, None, exchange.finish_reason, check.problem)


class ModerationsBackend:
    scored = True

    def __init__(
        self, client: httpx.AsyncClient, policy: Policy, model: str, s: BackendSettings
    ) -> None:
        self.client, self.policy, self.model, self.settings = client, policy, model, s
        self.where = f"{s.base_url} (/v1/moderations)"

    async def judge(self, image_url: str, seed: int | None) -> Judgement:
        s = self.settings
        body = {
            "model": self.model,
            "input": [{"type": "image_url", "image_url": {"url": image_url}}],
            "vlmserve": {"max_tokens": s.max_tokens, "temperature": s.temperature, "seed": seed},
        }
        try:
            response = await self.client.post("/v1/moderations", json=body)
        except httpx.HTTPError as exc:
            return Judgement(None, None, problem=f"transport: {exc!r}", error=True)
        if response.status_code != 200:
            return _refused(response)
        try:
            result = response.json()["results"][0]
            ours = result["vlmserve"]
            if ours["policy_hash"] != self.policy.hash:
                raise PolicyMismatch(
                    f"the server moderates under policy {ours.get('policy')!r} "
                    f"({ours['policy_hash'][:16]}), not {self.policy.source} "
                    f"({self.policy.hash[:16]}); start it with --moderation-policy "
                    f"{self.policy.source}, or use --api chat"
                )
            scores = [float(result["category_scores"][name]) for name in self.policy.class_names]
            answer = {name: ours[name] for name in STANDARD_FIELDS}
            answer.update(ours.get("extra") or {})
            finish = ours.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            problem = f"not a moderation answer under this policy: {exc!r}"
            return Judgement(None, None, problem=problem, error=True)
        # The server checked the answer; so do we (never trust what comes over the wire).
        check = check_answer(json.dumps(answer), self.policy)
        return Judgement(check.answer, scores, finish, check.problem)


def _refused(response: httpx.Response) -> Judgement:
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = response.text[:200], None
    problem = f"HTTP {response.status_code}: {message}"
    if response.status_code == 404 and code != "model_not_found":
        problem += " (a server without /v1/moderations? use --api chat)"
    # An answer the model wrote but that does not validate is an invalid answer, not a
    # missing one.
    return Judgement(None, None, problem=problem, error=code != "invalid_model_output")


class LocalBackend:
    scored = True

    def __init__(self, serving: Serving, policy: Policy, model: str, s: BackendSettings) -> None:
        self.serving, self.model, self.settings = serving, model, s
        self.moderator = Moderator(serving, policy)
        self.where = f"in-process engine ({model})"

    async def judge(self, image_url: str, seed: int | None) -> Judgement:
        s = self.settings
        options = ModerationOptions(s.max_tokens, s.temperature, seed)
        part = {"type": "image_url", "image_url": {"url": image_url}}
        try:
            async with self.serving.model(self.model) as handle:
                verdict = await self.moderator.moderate(handle, [part], options)
        except ModerationError as exc:
            return Judgement(None, None, problem=exc.message)
        except ServingError as exc:
            return Judgement(None, None, problem=f"{exc.status}: {exc.message}", error=True)
        scores = list(verdict.scores.values())
        return Judgement(verdict.answer, scores, verdict.finish_reason)


@contextlib.asynccontextmanager
async def open_backend(
    settings: BackendSettings, policy: Policy, default_model: Callable[[], Path]
) -> AsyncIterator[Backend]:
    """The backend `settings` name, open for the block; `default_model` gives the folder of
    the model to load in process when `settings.model` is None."""
    if settings.base_url is None:
        async with _local(settings, policy, default_model) as local:
            yield local
        return
    if settings.api not in APIS:
        raise ValueError(f"--api must be one of {', '.join(APIS)}, got {settings.api!r}")
    client = http_client(
        settings.base_url, settings.api_key, settings.timeout, settings.connections
    )
    async with client:
        model = settings.model or await first_model(client)
        kind = ModerationsBackend if settings.api == "moderations" else ChatBackend
        backend = kind(client, policy, model, settings)
        backend.where = f"{backend.where}, {await server_facts(client)}"
        yield backend


@contextlib.asynccontextmanager
async def _local(
    settings: BackendSettings, policy: Policy, default_model: Callable[[], Path]
) -> AsyncIterator[LocalBackend]:
    """An engine on `settings.model` (or the default model) behind the serving layer, built
    off the event loop, drained and closed when the block ends."""
    from vlmserve import (
        AsyncEngine,
        MediaLoader,
        ModelHandle,
        ModelInfo,
        ModelRegistry,
        build_engine,
    )

    path = settings.model or str(default_model())
    name = settings.model or Path(path).name
    engine = await asyncio.to_thread(build_engine, EngineConfig(model=path))
    async_engine = AsyncEngine(engine).start()
    registry = ModelRegistry([ModelHandle(ModelInfo.from_engine(engine, name), async_engine)])
    # The command read the images itself (files, or URLs the user named): the data URLs it
    # hands over may be as large as the images it accepts.
    media = MediaConfig(
        max_bytes_per_item=MAX_IMAGE_BYTES,
        max_bytes_per_request=MAX_IMAGE_BYTES,
        max_data_url_size=MAX_IMAGE_BYTES * 4 // 3 + 1024,
    )
    try:
        yield LocalBackend(
            Serving(registry, MediaLoader(MediaConnector(media))), policy, name, settings
        )
    finally:
        await registry.close(DRAIN_S)
