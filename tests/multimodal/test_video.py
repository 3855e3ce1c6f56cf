"""Video decoding with PyAV: sampling by time, frame cap, container allow-list, errors,
and the bounds on decoding work (frames decoded, seconds, frames resized mid-stream)."""

from __future__ import annotations

import io
import time
from fractions import Fraction

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


def static_bomb(num_frames: int, size: tuple[int, int] = (1280, 720), fps: int = 1000) -> bytes:
    """`num_frames` identical frames: one keyframe, then the encoder's "nothing changed"
    frame muxed again and again with new timestamps (so building it costs two encodes).
    At a high frame rate few of them are ever due for sampling, yet all must be decoded."""
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 1 << 30  # no keyframe after the first
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), "rgb24")
        packets = []
        for index in range(2):
            frame.pts = index
            packets += stream.encode(frame)
        packets += stream.encode(None)
        key, unchanged = packets[0], bytes(packets[1])
        container.mux(key)
        for index in range(1, num_frames):
            packet = av.Packet(unchanged)
            packet.stream, packet.time_base = stream, key.time_base
            packet.pts = packet.dts = index
            container.mux(packet)
    return buffer.getvalue()


def test_a_static_frame_bomb_is_refused_by_its_decoded_frames() -> None:
    # 12000 720p frames in a few MB: every one used to be decoded (11 s on the loaded VM).
    bomb = static_bomb(12000)
    assert len(bomb) < 8 * 1024 * 1024
    start = time.monotonic()
    error = decode_error(bomb)
    assert error.code is MediaErrorCode.DECOMPRESSION_BOMB
    assert "video_max_decoded_frames" in error.message
    assert time.monotonic() - start < 10


def test_decoded_frames_are_capped_whatever_the_sampling() -> None:
    fast = static_bomb(300, (32, 32))
    error = decode_error(fast, MediaConfig(video_max_decoded_frames=100))
    assert "more than 100 decoded frames" in error.message
    assert decode_video(fast, 0, MediaConfig(video_max_decoded_frames=300))


def test_decoding_stops_at_its_deadline() -> None:
    error = decode_error(static_bomb(2000, (320, 240)), MediaConfig(video_decode_timeout=0.001))
    assert error.code is MediaErrorCode.TIMEOUT and "video_decode_timeout" in error.message


def test_frames_that_grow_mid_stream_are_refused() -> None:
    """The declared size passes the pixel limit; frames after a mid-stream resize do not."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=10)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        large = av.CodecContext.create("mpeg4", "w")
        assert isinstance(large, av.VideoCodecContext)
        large.width, large.height, large.pix_fmt = 640, 480, "yuv420p"
        large.time_base = Fraction(1, 10)
        packets = []
        for encoder, (width, height) in ((stream, (32, 32)), (large, (640, 480))):
            for index in range(3):
                pixels = np.zeros((height, width, 3), dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                packets += encoder.encode(frame)
            packets += encoder.encode(None)
        for pts, packet in enumerate(packets):
            packet.stream = stream
            packet.pts = packet.dts = pts
            container.mux(packet)
    error = decode_error(buffer.getvalue(), MediaConfig(max_image_pixels=64 * 64, video_fps=10))
    assert error.code is MediaErrorCode.DECOMPRESSION_BOMB
    assert "video frame 3 is 307200 pixels" in error.message
