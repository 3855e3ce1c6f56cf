"""Chat media parts -> the prompt's typed media items, in prompt order.

A part may carry a URL (fetched and decoded under the media policy), a PIL image or a video's
PIL frames (offline use), or nothing but a `uuid` (served from the engine's media cache later).
A video carries `video_fps`: the rate its frames were sampled at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.multimodal.formats import MediaKind
from vlmserve.multimodal.loader import MediaRef, load_request_media
from vlmserve.multimodal.processor import to_rgb
from vlmserve.multimodal.prompt import ChatMedia
from vlmserve.types import MediaInput, Prompt


@dataclass
class LoadedChatMedia:
    """The media items in prompt order (`data` None: named by uuid alone)."""

    items: list[MediaInput] = field(default_factory=list)

    def as_prompt(self, text: str) -> Prompt:
        return Prompt(text=text, media=self.items)


async def load_chat_media(media: list[ChatMedia], connector: MediaConnector) -> LoadedChatMedia:
    urls = [(i, m) for i, m in enumerate(media) if isinstance(m.source, str)]
    refs = [
        MediaRef(MediaKind.IMAGE if m.modality == "image" else MediaKind.VIDEO, m.source)
        for _, m in urls
    ]
    try:
        fetched = await load_request_media(refs, connector)
    except MediaError as exc:
        # The loader counts URL items only; report the index among all media parts.
        if exc.item_index is None:
            raise
        raise MediaError(exc.code, exc.message, urls[exc.item_index][0]) from exc
    by_index = {i: item for (i, _), item in zip(urls, fetched)}
    fps = connector.config.video_fps
    out = LoadedChatMedia()
    for i, m in enumerate(media):
        data: Any
        if i in by_index:
            data = by_index[i]  # a video: frames decode_video sampled at video_fps
        elif m.source is None:
            data = None
        elif m.modality == "image" and isinstance(m.source, Image.Image):
            data = to_rgb(m.source)
        elif m.modality == "video" and _is_frames(m.source):
            data = [to_rgb(frame) for frame in m.source]
        else:
            wanted = "a PIL image" if m.modality == "image" else "a list of PIL frames"
            raise MediaError(
                MediaErrorCode.UNSUPPORTED_FORMAT,
                f"media item {i} must be a URL string or {wanted}, got {type(m.source).__name__}",
                item_index=i,
            )
        # The engine needs a video's sampling rate (it spaces M-RoPE time positions).
        video_fps = fps if m.modality == "video" else None
        out.items.append(MediaInput(m.modality, data, m.uuid, video_fps, m.max_pixels))
    return out


def _is_frames(source: Any) -> bool:
    return (
        isinstance(source, (list, tuple))
        and bool(source)
        and all(isinstance(frame, Image.Image) for frame in source)
    )
