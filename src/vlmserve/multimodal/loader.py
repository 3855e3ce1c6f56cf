"""Loading all media items of one request: fetched concurrently, decoded off the event loop,
returned in request order, with one byte budget shared by the whole request. A request
fetches at most `max_fetches_per_request` items at a time, so it never holds more than that
share of the connector's server-wide fetch slots (16 slow URLs in one request used to hold
all of them for the whole fetch timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from vlmserve.multimodal.budget import ByteBudget
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.multimodal.formats import MediaKind
from vlmserve.multimodal.image import decode_image
from vlmserve.multimodal.video import decode_video

LoadedMedia = Image.Image | list[Image.Image]  # one image, or a video's sampled frames


@dataclass(frozen=True)
class MediaRef:
    """One media item of a request, as the client wrote it."""

    kind: MediaKind
    url: str


async def load_request_media(
    refs: Sequence[MediaRef], connector: MediaConnector
) -> list[LoadedMedia]:
    """Decoded items in the order of `refs`, or the failing MediaError with the lowest index.

    The first failure cancels the other items' fetches: the request is refused anyway, and
    their bytes would only cost bandwidth and budget.
    """
    budget = ByteBudget(connector.config.max_bytes_per_request)
    share = asyncio.Semaphore(connector.config.max_fetches_per_request)
    tasks = [
        asyncio.create_task(_load_one(ref, index, connector, budget, share))
        for index, ref in enumerate(refs)
    ]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # no-op for finished tasks
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return [task.result() for task in tasks]


async def _load_one(
    ref: MediaRef,
    index: int,
    connector: MediaConnector,
    budget: ByteBudget,
    share: asyncio.Semaphore,
) -> LoadedMedia:
    # The request's share first: waiting for it holds none of the server-wide slots.
    async with share:
        data = await connector.fetch(ref.url, index, kind=ref.kind, budget=budget)
    decode = decode_image if ref.kind is MediaKind.IMAGE else decode_video
    # Decoding is CPU work: a thread keeps the event loop (and other requests) responsive.
    return await asyncio.to_thread(decode, data, index, connector.config)
