"""Video decoding under the media policy: bytes in, sampled RGB frames out (PyAV/FFmpeg).

Owns the container allow-list, frame sampling (`video_fps`, `video_max_frames`), the
per-frame pixel limit, and the bounds on decoding work: bytes do not bound it (12000 static
720p frames fit in a few hundred KB), so at most `video_max_decoded_frames` frames are
decoded and decoding stops at `video_decode_timeout` seconds.
"""

from __future__ import annotations

import io
import time

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
            deadline = time.monotonic() + config.video_decode_timeout
            for index, frame in enumerate(container.decode(stream)):
                _check_work(index, frame, deadline, len(frames), item_index, config)
                # Presentation time when the stream has one, else the frame's slot at its rate.
                at = frame.time if frame.time is not None else index / rate
                start = at if start is None else start
                # Sample k is due at start + k / fps: timestamps, not frame counts, decide,
                # so variable-frame-rate clips are sampled evenly in time.
                if at - start + 1e-6 < len(frames) / config.video_fps:
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


def _check_work(
    index: int,
    frame: av.VideoFrame,
    deadline: float,
    sampled: int,
    item_index: int,
    config: MediaConfig,
) -> None:
    """Refuse a video once decoding it costs more than the limits allow (frame `index` has
    just been decoded; `sampled` frames were kept so far)."""
    if index >= config.video_max_decoded_frames:
        raise MediaError(
            MediaErrorCode.DECOMPRESSION_BOMB,
            f"the video needs more than {config.video_max_decoded_frames} decoded frames "
            f"(video_max_decoded_frames) to sample it at {config.video_fps} fps; "
            f"{sampled} of up to {config.video_max_frames} samples were taken",
            item_index,
        )
    # The stream's declared size was checked; a frame may still change it mid-stream.
    if frame.width * frame.height > config.max_image_pixels:
        raise MediaError(
            MediaErrorCode.DECOMPRESSION_BOMB,
            f"video frame {index} is {frame.width * frame.height} pixels; the limit is "
            f"{config.max_image_pixels}",
            item_index,
        )
    if time.monotonic() > deadline:
        raise MediaError(
            MediaErrorCode.TIMEOUT,
            f"decoding the video took longer than {config.video_decode_timeout} s "
            "(video_decode_timeout)",
            item_index,
        )
