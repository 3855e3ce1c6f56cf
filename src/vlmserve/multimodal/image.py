"""Image decoding under the media policy: bytes in, one upright RGB `PIL.Image` out.

Owns the format allow-list (judged from the real bytes), the decompression-bomb guard
(judged from the header before any pixel is decoded), EXIF orientation and flattening of
transparency onto the configured background colour.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.formats import MediaKind, require_allowed_format

# Errors Pillow raises on malformed input, across its format plugins.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def decode_image(data: bytes, item_index: int, config: MediaConfig) -> Image.Image:
    """Decode `data` into an RGB image, or raise MediaError saying what is wrong with it."""
    image_format = require_allowed_format(data, MediaKind.IMAGE, item_index, config)
    try:
        # formats=[...]: only the plugin of the sniffed format may parse the bytes, so no
        # other Pillow plugin (EPS runs Ghostscript, for one) is ever reached.
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as exc:
        raise MediaError(MediaErrorCode.DECOMPRESSION_BOMB, str(exc), item_index) from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(image_format, exc, item_index) from None
    with image:
        _check_pixels(image, item_index, config)
        try:
            image.load()  # decodes the first frame only (GIF, animated WebP and PNG)
            upright = ImageOps.exif_transpose(image)
        except _DECODE_ERRORS as exc:
            raise _corrupt(image_format, exc, item_index) from None
        return _to_rgb(upright, config.rgba_background_color)


def _check_pixels(image: Image.Image, item_index: int, config: MediaConfig) -> None:
    width, height = image.size  # read from the header; nothing is decoded yet
    if width < 1 or height < 1:
        raise MediaError(
            MediaErrorCode.CORRUPT_DATA, f"image has no pixels ({width}x{height})", item_index
        )
    # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that. Its threshold is applied
    # here as a hard limit too; a warnings filter would do it, but filters are process-wide
    # state and images are decoded in several threads at once.
    limit = min(config.max_image_pixels, Image.MAX_IMAGE_PIXELS or config.max_image_pixels)
    if width * height > limit:
        raise MediaError(
            MediaErrorCode.DECOMPRESSION_BOMB,
            f"image is {width}x{height} = {width * height} pixels; the limit is {limit} "
            "(max_image_pixels)",
            item_index,
        )


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    # Dropping alpha would expose whatever colour transparent pixels happen to store
    # (often black); compositing shows what a viewer would see on that background.
    canvas = Image.new("RGBA", image.size, (*background, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    return canvas.convert("RGB")


def _corrupt(image_format: str, exc: BaseException, item_index: int) -> MediaError:
    return MediaError(
        MediaErrorCode.CORRUPT_DATA,
        f"cannot decode the {image_format} image: {exc or type(exc).__name__}",
        item_index,
    )
