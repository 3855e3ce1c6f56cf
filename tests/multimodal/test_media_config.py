"""MediaConfig: safe defaults, and nonsense refused when the config is built."""

from __future__ import annotations

import pytest

from vlmserve.config import MediaConfig, MediaFetchTimeout


def test_defaults_are_the_safe_ones() -> None:
    config = MediaConfig()
    assert config.allow_private_media_addresses is False
    assert config.allowed_media_ports == (80, 443)
    assert config.media_max_redirects == 0
    assert config.allowed_local_media_path is None
    assert config.allowed_media_domains == ()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"allowed_media_domains": ("a.*.com",)}, "allowed_media_domains"),
        ({"allowed_media_domains": ("*.",)}, "allowed_media_domains"),
        ({"allowed_media_ports": (0,)}, "allowed_media_ports"),
        ({"media_max_redirects": -1}, "media_max_redirects"),
        ({"media_fetch_timeout": MediaFetchTimeout(total=0)}, "media_fetch_timeout"),
        ({"max_bytes_per_item": 0}, "byte limits"),
        ({"max_concurrent_fetches": 0}, "max_concurrent_fetches"),
        ({"max_fetches_per_request": 0}, "max_fetches_per_request"),
        ({"allowed_local_media_path": "relative/dir"}, "absolute"),
        ({"rgba_background_color": (0, 0, 256)}, "rgba_background_color"),
        ({"video_fps": 0}, "video_fps"),
        ({"video_max_frames": 8, "video_max_decoded_frames": 7}, "video_max_decoded_frames"),
        ({"video_decode_timeout": 0}, "video_decode_timeout"),
    ],
)
def test_invalid_values_are_refused(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        MediaConfig(**overrides)
