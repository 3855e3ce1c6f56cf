"""`data:` and `file:` URLs: strict base64, size before decoding, declared type vs real bytes,
and file access confined to the allowed directory."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from vlmserve.config import MediaConfig
from vlmserve.multimodal.budget import ByteBudget
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.fetch import fetch_media

from .fakes import png_bytes, resolver_must_not_be_called, transport_must_not_be_built

pytestmark = pytest.mark.asyncio
PNG = png_bytes()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def load(
    url: str, config: MediaConfig | None = None, budget: ByteBudget | None = None
) -> bytes:
    return await fetch_media(
        url,
        2,
        config or MediaConfig(),
        budget=budget,
        resolver=resolver_must_not_be_called,
        transport_factory=transport_must_not_be_built,
    )


async def load_error(url: str, config: MediaConfig | None = None) -> MediaError:
    with pytest.raises(MediaError) as info:
        await load(url, config)
    assert info.value.item_index == 2
    return info.value


async def test_data_url_round_trips() -> None:
    assert await load(data_url(PNG)) == PNG
    assert await load(data_url(PNG).replace("data:image/png", "DATA:IMAGE/PNG")) == PNG


async def test_ten_megabyte_data_url_is_refused_for_size_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "data:image/png;base64," + "A" * (10 * 1024 * 1024)

    def no_decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("an oversized data URL was decoded")

    monkeypatch.setattr(base64, "b64decode", no_decode)
    started = time.monotonic()
    error = await load_error(url)
    assert time.monotonic() - started < 0.1
    assert error.code is MediaErrorCode.TOO_LARGE and error.status == 413
    assert "max_data_url_size is 8388608" in error.message


async def test_data_url_decoded_size_counts_against_item_and_request_limits() -> None:
    url = data_url(PNG + b"\0" * 3000)
    error = await load_error(url, MediaConfig(max_bytes_per_item=1000))
    assert error.code is MediaErrorCode.TOO_LARGE
    assert "max_bytes_per_item" in error.message
    budget = ByteBudget(limit=1000)
    with pytest.raises(MediaError) as info:
        await load(url, budget=budget)
    assert "max_bytes_per_request" in info.value.message


@pytest.mark.parametrize(
    ("url", "code", "fragment"),
    [
        (data_url(PNG, "image/jpeg"), MediaErrorCode.MIME_MISMATCH, "'image/jpeg'"),
        (data_url(PNG, "image/gif"), MediaErrorCode.MIME_MISMATCH, "which is PNG"),
        (data_url(b"<svg/>", "image/svg+xml"), MediaErrorCode.UNSUPPORTED_FORMAT, "allowed"),
        (data_url(PNG, "text/html"), MediaErrorCode.UNSUPPORTED_CONTENT_TYPE, "'text/html'"),
        (data_url(PNG, ""), MediaErrorCode.UNSUPPORTED_CONTENT_TYPE, "no type"),
        ("data:image/png," + "x" * 8, MediaErrorCode.INVALID_URL, "base64"),
        ("data:image/png;base64", MediaErrorCode.INVALID_URL, "base64"),
        ("data:image/png;base64,iVBO$w0K", MediaErrorCode.CORRUPT_DATA, "base64"),
        ("data:image/png;base64,iVBORw0KGgo", MediaErrorCode.CORRUPT_DATA, "base64"),  # padding
        ("data:image/png;base64,iVBO Rw0K", MediaErrorCode.CORRUPT_DATA, "base64"),
        ("data:image/png;base64,iVBOé0K", MediaErrorCode.CORRUPT_DATA, "ASCII"),  # was a 500
    ],
)
async def test_bad_data_urls_are_refused(url: str, code: MediaErrorCode, fragment: str) -> None:
    error = await load_error(url)
    assert error.code is code
    assert fragment in error.message


async def test_disallowed_real_format_is_refused_even_when_declared() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="BMP")
    config = MediaConfig(allowed_image_formats=("PNG", "JPEG"))
    error = await load_error(data_url(buffer.getvalue(), "image/bmp"), config)
    assert error.code is MediaErrorCode.UNSUPPORTED_FORMAT
    assert "it is BMP" in error.message


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    (root / "cat.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)  # same format: only the location is wrong
    return root


async def test_file_url_inside_the_allowed_directory_loads(media_root: Path) -> None:
    config = MediaConfig(allowed_local_media_path=str(media_root))
    assert await load((media_root / "cat.png").as_uri(), config) == PNG


@pytest.mark.parametrize("relative", ["../secret.png", "sub/../../secret.png", "..%2Fsecret.png"])
async def test_file_url_escaping_with_dotdot_is_refused(media_root: Path, relative: str) -> None:
    (media_root / "sub").mkdir()
    config = MediaConfig(allowed_local_media_path=str(media_root))
    error = await load_error(f"file://{media_root}/{relative}", config)
    assert error.code is MediaErrorCode.PATH_NOT_ALLOWED
    assert "outside the allowed media directory" in error.message


async def test_file_url_escaping_through_a_symlink_is_refused(media_root: Path) -> None:
    os.symlink(media_root.parent / "secret.png", media_root / "innocent.png")
    os.symlink(media_root.parent, media_root / "dir")
    config = MediaConfig(allowed_local_media_path=str(media_root))
    for name in ("innocent.png", "dir/secret.png"):
        error = await load_error((media_root / name).as_uri(), config)
        assert error.code is MediaErrorCode.PATH_NOT_ALLOWED


async def test_allowed_directory_that_is_a_prefix_of_a_sibling_does_not_leak(
    media_root: Path,
) -> None:
    sibling = media_root.parent / "media-private"
    sibling.mkdir()
    (sibling / "x.png").write_bytes(PNG)
    config = MediaConfig(allowed_local_media_path=str(media_root))
    error = await load_error((sibling / "x.png").as_uri(), config)
    assert error.code is MediaErrorCode.PATH_NOT_ALLOWED


async def test_file_url_other_failures(media_root: Path) -> None:
    (media_root / "notes.txt").write_text("hello")
    (media_root / "big.png").write_bytes(PNG + b"\0" * 5000)
    config = MediaConfig(allowed_local_media_path=str(media_root), max_bytes_per_item=1000)
    cases = {
        "missing.png": MediaErrorCode.FETCH_FAILED,
        "": MediaErrorCode.FETCH_FAILED,  # the directory itself: not a regular file
        "notes.txt": MediaErrorCode.UNSUPPORTED_FORMAT,
        "big.png": MediaErrorCode.TOO_LARGE,
    }
    for name, code in cases.items():
        error = await load_error(f"file://{media_root}/{name}", config)
        assert error.code is code, name
    error = await load_error(f"file://otherhost{media_root}/cat.png", config)
    assert error.code is MediaErrorCode.INVALID_URL


@pytest.mark.parametrize(
    "url",
    [
        "file://{root}/cat%00.png",  # os calls raise ValueError: embedded null byte
        "file://{root}/\ud800.png",  # ... and UnicodeEncodeError
        "file://[::1/cat.png",  # urlsplit raises ValueError
    ],
)
async def test_file_urls_the_os_cannot_take_are_invalid_not_500(media_root: Path, url: str) -> None:
    config = MediaConfig(allowed_local_media_path=str(media_root))
    error = await load_error(url.format(root=media_root), config)
    assert error.code is MediaErrorCode.INVALID_URL
