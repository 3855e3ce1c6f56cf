"""Image decoding: bombs refused from the header, corrupt data, EXIF orientation, alpha."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image, ImageFile

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.image import decode_image

from .fakes import png_bytes

CONFIG = MediaConfig()


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """A complete, valid 50000x50000 1-bit PNG: ~300 KB on disk, 2.5 G pixels decoded."""
    side = 50_000
    rows = (b"\0" * (1 + side // 8)) * 1000  # filter byte + packed bits, 1000 rows at a time
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Sizes of every image whose pixels get decoded."""
    calls: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        calls.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def decode_error(data: bytes, config: MediaConfig = CONFIG) -> MediaError:
    with pytest.raises(MediaError) as info:
        decode_image(data, 5, config)
    assert info.value.item_index == 5 and info.value.status == 400
    return info.value


def test_png_bomb_is_refused_from_its_header_fast(
    png_bomb: bytes, load_calls: list[tuple[int, int]]
) -> None:
    assert len(png_bomb) < 400_000
    started = time.monotonic()
    error = decode_error(png_bomb)
    assert time.monotonic() - started < 0.2
    assert error.code is MediaErrorCode.DECOMPRESSION_BOMB
    assert load_calls == []  # not one pixel decoded


def test_pixel_limit_is_checked_before_decoding(load_calls: list[tuple[int, int]]) -> None:
    data = png_bytes((2000, 1000))
    error = decode_error(data, MediaConfig(max_image_pixels=1_000_000))
    assert error.code is MediaErrorCode.DECOMPRESSION_BOMB
    assert "2000x1000 = 2000000 pixels; the limit is 1000000" in error.message
    assert load_calls == []
    assert decode_image(data, 0, MediaConfig(max_image_pixels=2_000_000)).size == (2000, 1000)


def test_pillow_bomb_warning_threshold_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Between MAX_IMAGE_PIXELS and twice that, Pillow itself would only warn.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    error = decode_error(png_bytes((12, 12)))
    assert error.code is MediaErrorCode.DECOMPRESSION_BOMB


def test_truncated_png_is_corrupt() -> None:
    noisy = Image.effect_noise((64, 64), 50).convert("RGB")
    data = encode(noisy, "PNG")
    error = decode_error(data[: len(data) // 2])
    assert error.code is MediaErrorCode.CORRUPT_DATA
    assert "PNG" in error.message


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, b"\xff\xd8\xff" + b"\0" * 50, b"GIF89a", b"BM"],
)
def test_garbage_behind_a_valid_signature_is_corrupt(data: bytes) -> None:
    assert decode_error(data).code is MediaErrorCode.CORRUPT_DATA


def test_formats_outside_the_allow_list_are_refused() -> None:
    tiff = encode(Image.new("RGB", (2, 2)), "TIFF")
    assert decode_error(tiff).code is MediaErrorCode.UNSUPPORTED_FORMAT
    webp = encode(Image.new("RGB", (2, 2)), "WEBP")
    error = decode_error(webp, MediaConfig(allowed_image_formats=("PNG",)))
    assert error.code is MediaErrorCode.UNSUPPORTED_FORMAT


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_every_allowed_format_decodes_to_rgb(image_format: str) -> None:
    image = decode_image(encode(Image.new("RGB", (3, 2), (200, 10, 10)), image_format), 0, CONFIG)
    assert image.mode == "RGB" and image.size == (3, 2)


def test_one_pixel_image_works() -> None:
    image = decode_image(png_bytes((1, 1), (1, 2, 3)), 0, CONFIG)
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (1, 2, 3)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: display rotated 90 degrees clockwise
    upright = decode_image(encode(image, "JPEG", exif=exif, quality=95), 0, CONFIG)
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60  # the red (left) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def rgba_pixels() -> bytes:
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    return encode(image, "PNG")


def test_transparency_is_composited_on_white_by_default() -> None:
    image = decode_image(rgba_pixels(), 0, CONFIG)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # not the stored red
    assert image.getpixel((1, 0)) == (0, 0, 255)
    half = image.getpixel((2, 0))
    assert isinstance(half, tuple) and all(126 <= c <= 128 for c in half)


def test_transparency_is_composited_on_the_configured_color() -> None:
    config = MediaConfig(rgba_background_color=(0, 128, 0))
    image = decode_image(rgba_pixels(), 0, config)
    assert image.getpixel((0, 0)) == (0, 128, 0)
    assert image.getpixel((1, 0)) == (0, 0, 255)


def test_other_transparent_modes_are_composited() -> None:
    config = MediaConfig(rgba_background_color=(0, 0, 255))
    grey_alpha = Image.new("LA", (2, 1))
    grey_alpha.putdata([(10, 0), (10, 255)])
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 10, 10, 10, 10, 10])  # two entries, same colour
    palette.putdata([0, 1])
    for data in (encode(grey_alpha, "PNG"), encode(palette, "PNG", transparency=0)):
        decoded = decode_image(data, 0, config)
        assert decoded.getpixel((0, 0)) == (0, 0, 255)  # transparent: the background
        assert decoded.getpixel((1, 0)) == (10, 10, 10)


def test_animated_gif_yields_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert decode_image(data, 0, CONFIG).getpixel((0, 0)) == (255, 0, 0)
