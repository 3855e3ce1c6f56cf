"""Media references from chat messages -> decoded images for the engine's prompt dict.

Fetching and decoding belong to the media connector (`vlmserve.multimodal`: SSRF-safe
fetch, format sniffing, decompression-bomb guard); this adapter only maps chat parts to its
items and back, and turns its `MediaError` into a 4xx naming the content part.
"""

from __future__ import annotations

import time

from PIL import Image

from vlmserve.api.errors import APIError
from vlmserve.api.metrics import Metrics
from vlmserve.config import MediaConfig
from vlmserve.multimodal.budget import ByteBudget
from vlmserve.multimodal.errors import MediaError
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.multimodal.formats import MediaKind
from vlmserve.multimodal.loader import MediaRef as LoadRef
from vlmserve.multimodal.loader import load_request_media
from vlmserve.multimodal.prompt import MediaRef


class MeteredConnector(MediaConnector):
    """The connector, reporting each fetch's time and size to the metrics."""

    def __init__(self, config: MediaConfig, metrics: Metrics) -> None:
        super().__init__(config)
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

    async def load_images(
        self, refs: list[MediaRef]
    ) -> tuple[list[Image.Image | None], list[str | None]]:
        """One entry per ref, in order: the decoded image, or None for a uuid-only ref
        (the engine's media cache holds it; a miss there is the engine's 400)."""
        for ref in refs:
            if ref.modality != "image":
                # The engine takes images only; fetching a video to drop it would waste work.
                raise APIError(
                    400, f"{ref.param}: video input is not supported by this server", ref.param
                )
        fetched = [i for i, ref in enumerate(refs) if ref.source is not None]
        loads = []
        for i in fetched:
            source = refs[i].source
            assert isinstance(source, str)  # the HTTP protocol only carries URLs
            loads.append(LoadRef(MediaKind.IMAGE, source))
        try:
            loaded = await load_request_media(loads, self.connector)
        except MediaError as exc:
            index = exc.item_index if exc.item_index is not None else 0
            param = refs[fetched[index]].param
            raise APIError(exc.status, f"{param}: {exc.message}", param, str(exc.code)) from exc
        images: list[Image.Image | None] = [None] * len(refs)
        for i, item in zip(fetched, loaded, strict=True):
            assert isinstance(item, Image.Image)
            images[i] = item
        return images, [ref.uuid for ref in refs]
