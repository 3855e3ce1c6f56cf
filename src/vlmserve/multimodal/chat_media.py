"""Chat media parts -> decoded media, grouped by modality in prompt order.

A part may carry a URL (fetched and decoded under the media policy), a PIL image or a video's
PIL frames (offline use), or nothing but a `uuid` (served from the engine's media cache later).
Videos become `{"frames": [...], "fps": video_fps}`: the rate their frames were sampled at."""

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


@dataclass
class LoadedChatMedia:
    """`data` and `uuids` keyed by modality, each list in prompt order (`None` = by uuid)."""

    data: dict[str, list[Any]] = field(default_factory=dict)
    uuids: dict[str, list[str | None]] = field(default_factory=dict)

    def as_prompt(self, text: str) -> dict[str, Any]:
        return {"prompt": text, "multi_modal_data": self.data, "multi_modal_uuids": self.uuids}


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
        item: Any
        if i in by_index:
            item = by_index[i]
            if m.modality == "video":
                # decode_video sampled the frames at video_fps; the engine needs the rate.
                item = {"frames": item, "fps": fps}
        elif m.source is None:
            item = None
        elif m.modality == "image" and isinstance(m.source, Image.Image):
            item = to_rgb(m.source)
        elif m.modality == "video" and _is_frames(m.source):
            item = {"frames": [to_rgb(frame) for frame in m.source], "fps": fps}
        else:
            wanted = "a PIL image" if m.modality == "image" else "a list of PIL frames"
            raise MediaError(
                MediaErrorCode.UNSUPPORTED_FORMAT,
                f"media item {i} must be a URL string or {wanted}, got {type(m.source).__name__}",
                item_index=i,
            )
        out.data.setdefault(m.modality, []).append(item)
        out.uuids.setdefault(m.modality, []).append(m.uuid)
    return out


def _is_frames(source: Any) -> bool:
    return (
        isinstance(source, (list, tuple))
        and bool(source)
        and all(isinstance(frame, Image.Image) for frame in source)
    )
