"""Loading all media of one request: order, shared byte budget, concurrency cap, first error."""

from __future__ import annotations

import asyncio
import base64

import pytest

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.multimodal.formats import MediaKind
from vlmserve.multimodal.loader import MediaRef, load_request_media

from .fakes import LocalServer, Request, png_bytes, send_response
from .test_video import make_clip

pytestmark = pytest.mark.asyncio
IMAGES = [png_bytes((8, 8), (i, 255 - i, 7)) for i in range(100)]


class Gauge:
    def __init__(self) -> None:
        self.in_flight = self.peak = 0


def serve_images(server: LocalServer, gauge: Gauge) -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        gauge.in_flight += 1
        gauge.peak = max(gauge.peak, gauge.in_flight)
        await asyncio.sleep(0.01)
        gauge.in_flight -= 1
        index = int(request.path.rsplit("/", 1)[1])
        await send_response(writer, IMAGES[index], headers={"Content-Type": "image/png"})

    for index in range(len(IMAGES)):
        server.routes[f"/img/{index}"] = handler


def connector_for(server: LocalServer, **overrides: object) -> MediaConnector:
    config = MediaConfig(
        allowed_media_ports=(server.port,),
        allow_private_media_addresses=True,
        max_concurrent_fetches=4,
        **overrides,
    )
    return MediaConnector(config)


def refs(server: LocalServer, count: int = 100) -> list[MediaRef]:
    base = f"http://127.0.0.1:{server.port}/img"
    return [MediaRef(MediaKind.IMAGE, f"{base}/{i}") for i in range(count)]


async def test_hundred_images_load_in_order_under_the_concurrency_cap(server: LocalServer) -> None:
    gauge = Gauge()
    serve_images(server, gauge)
    images = await load_request_media(refs(server), connector_for(server))
    assert [image.getpixel((0, 0)) for image in images] == [(i, 255 - i, 7) for i in range(100)]
    assert gauge.peak == 4


async def test_hundred_images_over_the_request_budget_fail_fast(server: LocalServer) -> None:
    gauge = Gauge()
    serve_images(server, gauge)
    budget = sum(len(data) for data in IMAGES[:10])
    connector = connector_for(server, max_bytes_per_request=budget)
    with pytest.raises(MediaError) as info:
        await load_request_media(refs(server), connector)
    error = info.value
    assert error.code is MediaErrorCode.TOO_LARGE and error.status == 413
    assert "max_bytes_per_request" in error.message
    assert error.item_index is not None and error.item_index >= 9
    assert len(server.requests) < 30  # the rest were cancelled, not fetched
    assert gauge.peak <= 4


async def test_the_failing_item_with_the_lowest_index_is_reported(server: LocalServer) -> None:
    gauge = Gauge()
    serve_images(server, gauge)
    items = [
        *refs(server, 3),
        MediaRef(MediaKind.IMAGE, "data:image/jpeg;base64," + base64.b64encode(IMAGES[0]).decode()),
        MediaRef(MediaKind.IMAGE, "ftp://example.com/a.png"),
    ]
    with pytest.raises(MediaError) as info:
        await load_request_media(items, connector_for(server))
    assert info.value.item_index == 3
    assert info.value.code is MediaErrorCode.MIME_MISMATCH


async def test_images_and_videos_mix_in_one_request() -> None:
    clip = "data:video/mp4;base64," + base64.b64encode(make_clip()).decode()
    image = "data:image/png;base64," + base64.b64encode(IMAGES[3]).decode()
    connector = MediaConnector(MediaConfig(video_fps=1.0))
    loaded = await load_request_media(
        [MediaRef(MediaKind.VIDEO, clip), MediaRef(MediaKind.IMAGE, image)], connector
    )
    frames, picture = loaded
    assert isinstance(frames, list) and len(frames) == 3
    assert not isinstance(picture, list) and picture.getpixel((0, 0)) == (3, 252, 7)
    assert await load_request_media([], connector) == []


async def test_one_request_cannot_hold_every_fetch_slot(server: LocalServer) -> None:
    """16 slow URLs in one request used to take all 16 server-wide slots for the whole
    fetch timeout, so no other request could fetch anything meanwhile."""
    release = asyncio.Event()

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.wait_for(release.wait(), 30)
        await send_response(writer, IMAGES[0], headers={"Content-Type": "image/png"})

    async def fast(request: Request, writer: asyncio.StreamWriter) -> None:
        await send_response(writer, IMAGES[1], headers={"Content-Type": "image/png"})

    for index in range(16):
        server.routes[f"/slow/{index}"] = slow
    server.routes["/fast"] = fast
    base = f"http://127.0.0.1:{server.port}"
    # The defaults: 16 slots server-wide, 4 for any one request.
    connector = MediaConnector(
        MediaConfig(allowed_media_ports=(server.port,), allow_private_media_addresses=True)
    )
    assert connector.config.max_concurrent_fetches == 16
    hog = asyncio.create_task(
        load_request_media(
            [MediaRef(MediaKind.IMAGE, f"{base}/slow/{i}") for i in range(16)], connector
        )
    )
    try:
        for _ in range(1000):
            if len(server.requests) >= 4:
                break
            await asyncio.sleep(0.01)
        other = await asyncio.wait_for(
            load_request_media([MediaRef(MediaKind.IMAGE, f"{base}/fast")], connector), 10
        )
        assert [image.getpixel((0, 0)) for image in other] == [(1, 254, 7)]
        assert sorted(server.paths()) == ["/fast"] + [f"/slow/{i}" for i in range(4)]
    finally:
        release.set()
    assert len(await hog) == 16
