"""Media references from chat messages -> decoded images for the engine's prompt dict.

Decoding runs in a worker thread so a large image never stalls the event loop. Every
failure is a 4xx naming the content part it came from.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time

from PIL import Image, UnidentifiedImageError

from vlmserve.api.errors import APIError
from vlmserve.api.metrics import Metrics
from vlmserve.multimodal.prompt import MediaRef

MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb guard, checked from the header


def _decode_data_url(url: str, param: str) -> tuple[Image.Image, int]:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise APIError(400, f"{param}: expected a base64 'data:image/...' URL", param)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{param}: the data URL is not valid base64", param) from exc
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise APIError(
                400, f"{param}: the image has more than {MAX_IMAGE_PIXELS} pixels", param
            )
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise APIError(400, f"{param}: the image data cannot be decoded ({exc})", param) from exc
    return image, len(raw)


class MediaLoader:
    """Handles `data:` URLs and cache references by uuid; http(s) and file URLs come with
    the SSRF-safe media connector."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def load_images(
        self, refs: list[MediaRef]
    ) -> tuple[list[Image.Image | None], list[str | None]]:
        images: list[Image.Image | None] = []
        for ref in refs:
            if ref.modality != "image":
                raise APIError(400, f"{ref.param}: video input is not supported", ref.param)
            if ref.source is None:  # a uuid-only reference: the engine's media cache has it
                images.append(None)
                continue
            assert isinstance(ref.source, str)  # the HTTP protocol only carries URLs
            if not ref.source.startswith("data:"):
                raise APIError(
                    400,
                    f"{ref.param}: only data: URLs are accepted for images",
                    f"{ref.param}.image_url.url",
                )
            start = time.monotonic()
            image, num_bytes = await asyncio.to_thread(_decode_data_url, ref.source, ref.param)
            self.metrics.observe_media(time.monotonic() - start, num_bytes)
            images.append(image)
        return images, [ref.uuid for ref in refs]
