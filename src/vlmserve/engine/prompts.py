"""vLLM's prompt forms -> the typed `Prompt`, once, where they enter the engine.

Accepted: a string; `{"prompt": str}` or `{"prompt_token_ids": [int]}`, each with optional
`multi_modal_data` (`{"image": img | [img], "video": frames | {"frames", "fps"} | [...]}`)
and `multi_modal_uuids` (the same shape, a uuid or None per item), and `cache_salt` (a
string: requests share prefix-cache blocks only with equal salts). Only the shape is checked
here; what the values mean (token ranges, limits, placeholders) is checked by the input
processor for every prompt, typed or converted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from vlmserve.engine.inputs import InputError
from vlmserve.types import MediaInput, Prompt

PromptInput = str | dict[str, Any] | Prompt
_FIELDS = {"prompt", "prompt_token_ids", "multi_modal_data", "multi_modal_uuids", "cache_salt"}


def to_prompt(prompt: PromptInput) -> Prompt:
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        return Prompt(text=prompt)
    if not isinstance(prompt, dict):
        raise InputError("a prompt must be a string or a dict", "prompt")
    unknown = set(prompt) - _FIELDS
    if unknown:
        raise InputError(f"unknown prompt fields: {sorted(unknown)}", "prompt")
    ids = prompt.get("prompt_token_ids")
    if ids is not None and not isinstance(ids, (list, tuple)):
        raise InputError("prompt_token_ids must be a list of ints", "prompt_token_ids")
    mm_data = prompt.get("multi_modal_data") or {}
    mm_uuids = prompt.get("multi_modal_uuids") or {}
    if not isinstance(mm_data, dict) or not isinstance(mm_uuids, dict):
        raise InputError("multi_modal_data and multi_modal_uuids must be dicts", "multi_modal_data")
    media: list[MediaInput] = []
    for modality in dict.fromkeys([*mm_data, *mm_uuids]):
        media.extend(_items(str(modality), mm_data.get(modality), mm_uuids.get(modality)))
    return Prompt(
        text=prompt.get("prompt"),
        token_ids=list(ids) if ids is not None else None,
        media=media,
        cache_salt=prompt.get("cache_salt"),
    )


def _items(modality: str, data: Any, uuids: Any) -> list[MediaInput]:
    values = _as_list(data, single=_single_video if modality == "video" else None)
    names = _as_list(uuids)
    if names and values and len(names) != len(values):
        raise InputError(
            f"{len(names)} {modality} uuids given for {len(values)} {modality}s",
            "multi_modal_uuids",
        )
    values = values or [None] * len(names)
    names = names or [None] * len(values)
    items = []
    for index, (value, uuid) in enumerate(zip(values, names)):
        if modality == "video" and isinstance(value, dict):
            items.append(_video(value, uuid, f"multi_modal_data.video[{index}]"))
        else:
            items.append(MediaInput(modality, value, uuid))
    return items


def _video(video: dict[str, Any], uuid: str | None, param: str) -> MediaInput:
    unknown = set(video) - {"frames", "fps"}
    if unknown:
        raise InputError(f"{param} has unknown fields {sorted(unknown)}", param)
    if "fps" in video and video["fps"] is None:
        # None means "the default" in a typed item; written out here, it is a mistake.
        raise InputError(f"{param}.fps must be a positive number, got None", param)
    return MediaInput("video", video.get("frames"), uuid, video.get("fps"))


def _as_list(value: Any, single: Callable[[Any], bool] | None = None) -> list[Any]:
    if value is None:
        return []
    if single is not None and single(value):
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _single_video(value: Any) -> bool:
    """`{"video": frames}` or `{"video": {"frames": ...}}`: one video, not a list of them
    (a video is never a PIL image, so a list of images can only be one video's frames)."""
    return isinstance(value, dict) or (
        isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], Image.Image)
    )
