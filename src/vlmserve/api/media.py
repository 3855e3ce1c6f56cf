"""Chat media parts -> the engine's prompt dict, through the shared media loader.

Fetching and decoding belong to `vlmserve.multimodal` (SSRF-safe connector, format sniffing,
decompression-bomb guard); this module adds what only the HTTP edge knows: which content
part an error came from, the 4xx it becomes, and fetch metrics.
"""

from __future__ import annotations

import time
from typing import Any

from vlmserve.api.errors import APIError
from vlmserve.api.metrics import Metrics
from vlmserve.config import MediaConfig
from vlmserve.multimodal.budget import ByteBudget
from vlmserve.multimodal.chat_media import load_chat_media
from vlmserve.multimodal.errors import MediaError
from vlmserve.multimodal.fetch import MediaConnector, Resolver, TransportFactory, resolve_host
from vlmserve.multimodal.formats import MediaKind
from vlmserve.multimodal.prompt import ChatPrompt


class MeteredConnector(MediaConnector):
    """The connector, reporting each fetch's time and size to the metrics."""

    def __init__(
        self,
        config: MediaConfig,
        metrics: Metrics,
        resolver: Resolver = resolve_host,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        super().__init__(config, resolver=resolver, transport_factory=transport_factory)
        self.metrics = metrics

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
        self.metrics.observe_media(time.monotonic() - start, len(data))
        return data


class MediaLoader:
    def __init__(self, connector: MediaConnector) -> None:
        self.connector = connector

    async def prompt(self, chat: ChatPrompt) -> dict[str, Any]:
        """The engine prompt for `chat`, its images and videos fetched and decoded in order."""
        try:
            loaded = await load_chat_media(chat.media, self.connector)
        except MediaError as exc:
            index = exc.item_index if exc.item_index is not None else 0
            param = chat.media[index].param
            raise APIError(exc.status, f"{param}: {exc.message}", param, str(exc.code)) from exc
        return loaded.as_prompt(chat.text)
