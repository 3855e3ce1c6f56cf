"""Video decoding under the media policy: bytes in, sampled RGB frames out (PyAV/FFmpeg).

Owns the container allow-list, frame sampling (`video_fps`, `video_max_frames`) and the
per-frame pixel limit.
"""

from __future__ import annotations

import io

import av
from PIL import Image

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.formats import MediaKind, require_allowed_format


def decode_video(data: bytes, item_index: int, config: MediaConfig) -> list[Image.Image]:
    """Frames of `data` sampled at `video_fps`, at most `video_max_frames`, as RGB images."""
    container_format = require_allowed_format(data, MediaKind.VIDEO, item_index, config)
    frames: list[Image.Image] = []
    try:
        # The demuxer is named, never probed: probing could pick FFmpeg's HLS or concat
        # demuxers, which open the URLs and files a playlist lists (an SSRF of their own).
        with av.open(io.BytesIO(data), mode="r", format=container_format) as container:
            if not container.streams.video:
                raise MediaError(
                    MediaErrorCode.CORRUPT_DATA, "the video has no video stream", item_index
                )
            stream = container.streams.video[0]
            pixels = stream.codec_context.width * stream.codec_context.height
            if pixels > config.max_image_pixels:
                raise MediaError(
                    MediaErrorCode.DECOMPRESSION_BOMB,
                    f"video frames are {pixels} pixels; the limit is {config.max_image_pixels}",
                    item_index,
                )
            rate = float(stream.average_rate or config.video_fps)
            start: float | None = None
            for index, frame in enumerate(container.decode(stream)):
                # Presentation time when the stream has one, else the frame's slot at its rate.
                time = frame.time if frame.time is not None else index / rate
                start = time if start is None else start
                # Sample k is due at start + k / fps: timestamps, not frame counts, decide,
                # so variable-frame-rate clips are sampled evenly in time.
                if time - start + 1e-6 < len(frames) / config.video_fps:
                    continue
                frames.append(frame.to_image().convert("RGB"))
                if len(frames) == config.video_max_frames:
                    break
    except av.FFmpegError as exc:
        raise MediaError(
            MediaErrorCode.CORRUPT_DATA, f"cannot decode the video: {exc}", item_index
        ) from None
    if not frames:
        raise MediaError(MediaErrorCode.CORRUPT_DATA, "the video has no frames", item_index)
    return frames
