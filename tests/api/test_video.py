"""Video over HTTP: a `video_url` with an MP4 in a data: URL is answered like the same frames
given to the engine directly; bad videos and too many videos are 400s naming the item."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.api.conftest import MAX_VIDEOS, assert_error, chat_body, png_data_url
from tests.engine.test_video import mp4_clip
from vlmserve.config import MediaConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.multimodal.video import decode_video
from vlmserve.types import SamplingParams

CHAT = "/v1/chat/completions"


def video_part(data: bytes, mime: str = "video/mp4") -> dict[str, object]:
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    return {"type": "video_url", "video_url": {"url": url}}


async def test_video_url_is_answered_like_the_engine(
    client: httpx.AsyncClient, async_engine: AsyncEngine
) -> None:
    clip = mp4_clip(seed=4)
    content = [video_part(clip), {"type": "text", "text": "What moves?"}]
    response = await client.post(CHAT, json=chat_body(content, temperature=0))
    assert response.status_code == 200, response.text
    body = response.json()

    frames = decode_video(clip, 0, MediaConfig())
    engine = async_engine.engine
    template_text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>What moves?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    prompt = {
        "prompt": template_text,
        "multi_modal_data": {"video": {"frames": frames, "fps": MediaConfig().video_fps}},
    }
    final = None
    params = SamplingParams(temperature=0, max_tokens=8)
    async for output in async_engine.generate(prompt, params, "direct-video"):
        final = output
    assert final is not None
    assert body["choices"][0]["message"]["content"] == final.outputs[0].text
    assert body["usage"]["prompt_tokens"] == len(final.prompt_token_ids)
    video_tokens = final.prompt_token_ids.count(engine.model_config.video_token_id)
    assert video_tokens > 1
    # Video tokens have no OpenAI field: counted apart, only in requests that had a video.
    details = body["usage"]["prompt_tokens_details"]
    assert details["video_tokens"] == video_tokens and details["image_tokens"] == 0


@pytest.mark.parametrize(
    ("data", "mime", "needle"),
    [
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "video/mp4", "cannot decode the video"),
        (b"not a video at all", "video/mp4", "not an allowed video format"),
    ],
)
async def test_bad_video_is_a_400_naming_the_item(
    client: httpx.AsyncClient, data: bytes, mime: str, needle: str
) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "text", "text": "and"},
        video_part(data, mime),
    ]
    message = assert_error(await client.post(CHAT, json=chat_body(content)), 400)
    assert message.startswith("messages[0].content[2]: "), message
    assert needle in message
    # The server is fine afterwards.
    assert (await client.post(CHAT, json=chat_body("Hello"))).status_code == 200


async def test_too_many_videos(client: httpx.AsyncClient) -> None:
    content = [video_part(b"never decoded")] * (MAX_VIDEOS + 1)
    message = assert_error(await client.post(CHAT, json=chat_body(content)), 400, "messages")
    assert f"{MAX_VIDEOS + 1} videos in one request" in message


async def test_a_video_named_by_uuid_only_reuses_the_cached_one(client: httpx.AsyncClient) -> None:
    clip = video_part(mp4_clip(seed=6))
    clip["video_url"]["uuid"] = "clip-6"  # type: ignore[index]
    first = await client.post(CHAT, json=chat_body([clip], temperature=0))
    assert first.status_code == 200, first.text
    by_uuid = {"type": "video_url", "video_url": {"uuid": "clip-6"}}
    second = await client.post(CHAT, json=chat_body([by_uuid], temperature=0))
    assert second.status_code == 200, second.text
    assert second.json()["choices"] == first.json()["choices"]
    missing = {"type": "video_url", "video_url": {"uuid": "clip-7"}}
    message = assert_error(await client.post(CHAT, json=chat_body([missing])), 400)
    assert "video uuid 'clip-7' is not in the media cache" in message
