"""What a media payload really is, read from its first bytes rather than from labels.

Labels (Content-Type, data: URL types, file names) are chosen by whoever sends the media;
magic numbers are what the decoders will act on, so every format decision uses them.
"""

from __future__ import annotations

import enum

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode


class MediaKind(enum.StrEnum):
    IMAGE = "image"
    VIDEO = "video"


# Pillow format name -> MIME types a client may declare for it.
IMAGE_MIME_TYPES: dict[str, frozenset[str]] = {
    "PNG": frozenset({"image/png", "image/apng"}),
    "JPEG": frozenset({"image/jpeg", "image/jpg", "image/pjpeg"}),
    "GIF": frozenset({"image/gif"}),
    "WEBP": frozenset({"image/webp"}),
    "BMP": frozenset({"image/bmp", "image/x-bmp", "image/x-ms-bmp"}),
}

# FFmpeg demuxer name -> MIME types. Only these demuxers are ever used (see video.py).
VIDEO_MIME_TYPES: dict[str, frozenset[str]] = {
    "mp4": frozenset({"video/mp4", "video/quicktime"}),
    "matroska": frozenset({"video/webm", "video/x-matroska"}),
    "avi": frozenset({"video/avi", "video/x-msvideo", "video/msvideo"}),
}


def sniff_image_format(data: bytes) -> str | None:
    """The Pillow name of the image format `data` starts with, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def sniff_video_container(data: bytes) -> str | None:
    """The FFmpeg demuxer for the container `data` starts with, or None."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def require_allowed_format(
    data: bytes, kind: MediaKind, item_index: int, config: MediaConfig
) -> str:
    """The sniffed format of `data`; MediaError when it is not one this server decodes."""
    if kind is MediaKind.IMAGE:
        found = sniff_image_format(data)
        allowed = config.allowed_image_formats
    else:
        found = sniff_video_container(data)
        allowed = tuple(VIDEO_MIME_TYPES)
    if found is None or found not in allowed:
        raise MediaError(
            MediaErrorCode.UNSUPPORTED_FORMAT,
            f"the data is not an allowed {kind} format (allowed: {', '.join(allowed)})"
            + ("" if found is None else f"; it is {found}"),
            item_index,
        )
    return found


def check_declared_type(
    declared: str, data: bytes, kind: MediaKind, item_index: int, config: MediaConfig
) -> None:
    """Refuse `data` unless its real format is allowed and is what `declared` names."""
    found = require_allowed_format(data, kind, item_index, config)
    table = IMAGE_MIME_TYPES if kind is MediaKind.IMAGE else VIDEO_MIME_TYPES
    if declared not in table[found]:
        raise MediaError(
            MediaErrorCode.MIME_MISMATCH,
            f"declared type {declared!r} does not match the data, which is {found}",
            item_index,
        )
