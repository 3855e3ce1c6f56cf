"""Classifying one input under a policy through the serving layer (no HTTP, no engine
internals): the shared path of `POST /v1/moderations` and of in-process `classify` / `eval`.

1. The policy's chat is rendered once (`Serving.chat_prompt`: template, reserved tokens,
   media fetched through the server's SSRF-safe connector and decoded).
2. One scoring pass gives each class path's log-probability (`Serving.score`); the class
   scores are those renormalised over the classes with the policy's temperature.
3. The answer's class is decided from them — the argmax when greedy, so
   `argmax(scores) == best_class` holds by construction — and the model writes the answer
   under the policy's strict schema with `best_class` narrowed to that class.
4. The answer is checked like any other (strict JSON, the policy's schema, nothing rescued).

It never fails open: a media, model or parse failure is a `ServingError`, never a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vlmserve.registry import ModelHandle
from vlmserve.safety.answers import check_answer
from vlmserve.safety.policy import STANDARD_FIELDS, Policy
from vlmserve.safety.scores import choose_class, class_paths, class_scores, flagged_classes
from vlmserve.serving import ScoreRequest, Serving, ServingError
from vlmserve.types import SamplingParams, StructuredOutputsParams

DEFAULT_MAX_TOKENS = 256


class ModerationError(ServingError):
    """The model's output cannot be turned into a verdict (non-finite scores, an answer that
    does not validate): a server fault, reported as such."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message, code="invalid_model_output")


@dataclass(frozen=True)
class ModerationOptions:
    max_tokens: int = DEFAULT_MAX_TOKENS  # for the written answer
    temperature: float = 0.0  # 0: the most probable class; above: drawn from the scores
    seed: int | None = None


@dataclass(frozen=True)
class Verdict:
    best_class: str
    scores: dict[str, float]  # per class, in policy order; sum to 1
    categories: dict[str, bool]  # flagged per class
    answer: dict[str, Any]  # the validated answer object
    finish_reason: str | None

    @property
    def flagged(self) -> bool:
        return any(self.categories.values())

    @property
    def extra(self) -> dict[str, Any]:
        """The answer's schema-extension fields."""
        return {k: v for k, v in self.answer.items() if k not in STANDARD_FIELDS}


class Moderator:
    def __init__(self, serving: Serving, policy: Policy) -> None:
        self.serving = serving
        self.policy = policy

    async def moderate(
        self,
        handle: ModelHandle,
        parts: list[dict[str, Any]],
        options: ModerationOptions,
        cache_salt: str | None = None,
    ) -> Verdict:
        """`parts`: OpenAI content parts (text, image_url) classified as one input;
        `cache_salt`: the caller's (a tenant's) prefix-cache and media namespace."""
        policy = self.policy
        messages = policy.messages(parts)
        prompt = await self.serving.chat_prompt(handle, messages, cache_salt=cache_salt)
        scored = await self.serving.score(handle, ScoreRequest(prompt, class_paths(policy)))
        logprobs = [c.cumulative_logprob for c in scored.outputs]
        if not all(lp is not None and math.isfinite(lp) for lp in logprobs):
            raise ModerationError(f"the model's class scores are not finite: {logprobs}")
        finite = [float(lp) for lp in logprobs if lp is not None]
        scores = class_scores(finite, policy)
        chosen = policy.class_names[choose_class(finite, options.temperature, options.seed)]
        schema = policy.output_schema(only_class=chosen)
        params = SamplingParams(
            temperature=options.temperature,
            seed=options.seed,
            max_tokens=options.max_tokens,
            structured_outputs=StructuredOutputsParams(json=schema, strict=True),
        )
        generation = await self.serving.start_generation(handle, prompt, params)
        final = (await generation.final()).outputs[0]
        check = check_answer(final.text, policy)
        if check.answer is None or check.best_class != chosen:
            raise ModerationError(
                f"the model's answer does not validate under the policy: {check.problem}"
            )
        return Verdict(
            best_class=chosen,
            scores=dict(zip(policy.class_names, scores, strict=True)),
            categories=flagged_classes(policy, scores),
            answer=check.answer,
            finish_reason=final.finish_reason,
        )
