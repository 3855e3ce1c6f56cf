"""`LLM`: batch inference without a server, with vLLM's method names and semantics.

llm = LLM(model="path/to/model")
outs = llm.generate({"prompt": "...<|vision_start|><|image_pad|><|vision_end|>...",
                     "multi_modal_data": {"image": [img]}}, SamplingParams(max_tokens=32))
outs = llm.chat([{"role": "user", "content": [{"type": "image_url", ...}, {"type": "text", ...}]}])
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.engine import build_engine
from vlmserve.engine.loading import set_cpu_threads
from vlmserve.engine.prompts import PromptInput, to_prompt
from vlmserve.multimodal.chat_media import LoadedChatMedia, load_chat_media
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.multimodal.prompt import ChatMedia, build_chat_prompt
from vlmserve.types import Prompt, RequestOutput, SamplingParams

Conversation = list[dict[str, Any]]


class LLM:
    """One model in this process. `close()` (or leaving a `with LLM(...)` block) frees its
    memory; `cpu_threads` sets torch's thread count for the whole process, so it is only
    applied when given."""

    def __init__(
        self,
        model: str,
        media_config: MediaConfig | None = None,
        cpu_threads: int | None = None,
        **engine_args: Any,
    ) -> None:
        if cpu_threads is not None:
            set_cpu_threads(cpu_threads)
        self.engine = build_engine(EngineConfig(model=model, **engine_args))
        # Offline callers trust their own inputs less than one might think: the same safe
        # media policy as the server applies unless they pass their own.
        self.media_config = media_config or MediaConfig()
        self._ids = itertools.count()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the engine's memory (KV cache, weights, caches); later calls raise."""
        self.engine.close()

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the order of the prompts."""
        given = [prompts] if isinstance(prompts, (str, dict, Prompt)) else list(prompts)
        # vLLM's dict forms become typed prompts here, all before any request is queued.
        batch = [to_prompt(prompt) for prompt in given]
        params = self._params(sampling_params, len(batch))
        order = []
        try:
            for prompt, p in zip(batch, params, strict=True):
                request_id = f"offline-{next(self._ids)}"
                self.engine.add_request(request_id, prompt, p)
                order.append(request_id)
            return self._run(order)
        except BaseException:
            for request_id in order:
                self.engine.abort(request_id)
            raise

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """OpenAI-style messages (one conversation or a list of them) through the chat template;
        images may be PIL images or `data:` / `file:` / `http(s):` URLs."""
        single = bool(messages) and isinstance(messages[0], dict)
        conversations: list[Conversation] = [messages] if single else list(messages)  # type: ignore[list-item, arg-type]
        template = (
            chat_template or self.engine.config.chat_template or self.engine.tokenizer.chat_template
        )
        if template is None:
            raise ValueError("the model has no chat template; pass chat_template=")
        prompts: list[PromptInput] = []
        for conversation in conversations:
            chat = build_chat_prompt(
                conversation, template, self.engine.tokenizer.reserved_tokens, add_generation_prompt
            )
            media = asyncio.run(self._load_media(chat.media))
            prompts.append(media.as_prompt(chat.text))
        return self.generate(prompts, sampling_params)

    async def _load_media(self, media: list[ChatMedia]) -> LoadedChatMedia:
        # A connector per call: its semaphore belongs to the event loop asyncio.run creates.
        return await load_chat_media(media, MediaConnector(self.media_config))

    def _params(
        self, sampling_params: SamplingParams | Sequence[SamplingParams] | None, count: int
    ) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams() for _ in range(count)]
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count:
            raise ValueError(f"{len(params)} sampling params for {count} prompts")
        return params

    def _run(self, order: list[str]) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        while len(done) < len(order):
            for output in self.engine.step():
                if output.finished:
                    done[output.request_id] = output
        return [done[request_id] for request_id in order]
