"""Chat media -> the prompt's typed media items, through one shared connector.

Fetching and decoding belong to `vlmserve.multimodal` (SSRF-safe connector, format sniffing,
decompression-bomb guard); this module adds what serving knows: which content part an error
came from, the status it becomes, and a hook that reports each fetch (metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vlmserve.config import MediaConfig
from vlmserve.multimodal.budget import ByteBudget
from vlmserve.multimodal.chat_media import load_chat_media
from vlmserve.multimodal.errors import MediaError
from vlmserve.multimodal.fetch import MediaConnector, Resolver, TransportFactory, resolve_host
from vlmserve.multimodal.formats import MediaKind
from vlmserve.multimodal.policy import NO_OVERRIDES, MediaOverrides
from vlmserve.multimodal.prompt import ChatPrompt
from vlmserve.serving.errors import ServingError
from vlmserve.types import Prompt

FetchObserver = Callable[[float, int], None]  # (seconds, bytes) of one fetch


class MeteredConnector(MediaConnector):
    """The connector, reporting each fetch's time and size."""

    def __init__(
        self,
        config: MediaConfig,
        on_fetch: FetchObserver,
        resolver: Resolver = resolve_host,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        super().__init__(config, resolver=resolver, transport_factory=transport_factory)
        self.on_fetch = on_fetch

    async def fetch(
        self,
        url: str,
        item_index: int,
        *,
        kind: MediaKind = MediaKind.IMAGE,
        budget: ByteBudget | None = None,
    ) -> bytes:
        start = time.monotonic()
        data = await super().fetch(url, item_index, kind=kind, budget=budget)
        self.on_fetch(time.monotonic() - start, len(data))
        return data


class MediaLoader:
    def __init__(self, connector: MediaConnector) -> None:
        self.connector = connector

    async def prompt(self, chat: ChatPrompt, policy: MediaOverrides = NO_OVERRIDES) -> Prompt:
        """The engine prompt for `chat`, its images and videos fetched and decoded in order
        under the server's media policy narrowed by the model's `policy`."""
        try:
            loaded = await load_chat_media(chat.media, self.connector.narrowed(policy))
        except MediaError as exc:
            index = exc.item_index if exc.item_index is not None else 0
            param = chat.media[index].param
            raise ServingError(exc.status, f"{param}: {exc.message}", param, str(exc.code)) from exc
        return loaded.as_prompt(chat.text)
