"""Video decoding with PyAV: sampling by time, frame cap, container allow-list, errors."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.video import decode_video


def make_clip(container_format: str = "mp4", codec: str = "mpeg4", fps: int = 10) -> bytes:
    """Three seconds of 32x32 frames; frame i is uniformly grey at level 8*i."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(3 * fps):
            pixels = np.full((32, 32, 3), 8 * index, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def grey_level(image: object) -> float:
    return float(np.asarray(image).mean())


def test_frames_are_sampled_by_time_and_capped() -> None:
    clip = make_clip()
    frames = decode_video(clip, 0, MediaConfig(video_fps=2.0, video_max_frames=32))
    assert len(frames) == 6  # 3 s at 2 frames per second
    assert all(f.mode == "RGB" and f.size == (32, 32) for f in frames)
    # Samples are 0.5 s = 5 source frames apart: grey levels 0, 40, 80, ...
    assert [round(grey_level(f) / 40) for f in frames] == [0, 1, 2, 3, 4, 5]
    capped = decode_video(clip, 0, MediaConfig(video_fps=2.0, video_max_frames=4))
    assert len(capped) == 4


@pytest.mark.parametrize(("container_format", "codec"), [("matroska", "mpeg4"), ("avi", "mpeg4")])
def test_other_allowed_containers_decode(container_format: str, codec: str) -> None:
    frames = decode_video(make_clip(container_format, codec), 0, MediaConfig(video_fps=1.0))
    assert len(frames) == 3


def decode_error(data: bytes, config: MediaConfig | None = None) -> MediaError:
    with pytest.raises(MediaError) as info:
        decode_video(data, 4, config or MediaConfig())
    assert info.value.item_index == 4
    return info.value


def test_playlist_is_never_handed_to_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    # An HLS playlist would make FFmpeg's hls demuxer open the URLs it lists.
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n"

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("FFmpeg was asked to open a non-allow-listed container")

    monkeypatch.setattr(av, "open", no_open)
    error = decode_error(playlist)
    assert error.code is MediaErrorCode.UNSUPPORTED_FORMAT
    assert "mp4" in error.message


def test_corrupt_video_is_a_media_error() -> None:
    clip = make_clip()
    error = decode_error(clip[:8] + b"\0" * 200)
    assert error.code is MediaErrorCode.CORRUPT_DATA


def test_oversized_frames_are_refused_before_decoding() -> None:
    error = decode_error(make_clip(), MediaConfig(max_image_pixels=32 * 32 - 1))
    assert error.code is MediaErrorCode.DECOMPRESSION_BOMB
