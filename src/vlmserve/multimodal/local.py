"""Media that needs no network: `data:` URLs (inline base64) and `file:` URLs.

Both are checked for size before their bytes are materialised: a data URL from its length,
a file from its metadata.
"""

from __future__ import annotations

import base64
import os
import stat
from urllib.parse import unquote, urlsplit

from vlmserve.config import MediaConfig
from vlmserve.multimodal.budget import ByteBudget
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.formats import MediaKind, check_declared_type, require_allowed_format


def load_data_url(
    url: str, item_index: int, kind: MediaKind, config: MediaConfig, budget: ByteBudget
) -> bytes:
    """The bytes of a base64 `data:` URL whose declared type matches its real format."""
    if len(url) > config.max_data_url_size:
        raise MediaError(
            MediaErrorCode.TOO_LARGE,
            f"data URL is {len(url)} characters; max_data_url_size is {config.max_data_url_size}",
            item_index,
        )
    header, comma, payload = url[len("data:") :].partition(",")
    mime, *params = header.split(";")
    if not comma or "base64" not in (p.strip().lower() for p in params):
        raise MediaError(
            MediaErrorCode.INVALID_URL,
            "data URLs must have the form data:<type>;base64,<data>",
            item_index,
        )
    mime = mime.strip().lower()
    if not mime.startswith(f"{kind}/"):
        raise MediaError(
            MediaErrorCode.UNSUPPORTED_CONTENT_TYPE,
            f"data URL declares {mime or 'no type'!r}; expected {kind}/*",
            item_index,
        )
    # Base64 carries 3 bytes per 4 characters: the decoded size is known before decoding.
    decoded_size = len(payload) // 4 * 3
    _check_item_size(decoded_size, item_index, config)
    budget.charge(decoded_size, item_index)
    try:
        # validate=True: any character outside the alphabet, or bad padding, is an error
        # rather than being skipped (lenient decoders let payloads smuggle extra data).
        data = base64.b64decode(payload, validate=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII payload
        raise MediaError(
            MediaErrorCode.CORRUPT_DATA, f"data URL is not valid base64: {exc}", item_index
        ) from None
    check_declared_type(mime, data, kind, item_index, config)
    return data


def load_file_url(url: str, item_index: int, kind: MediaKind, config: MediaConfig) -> bytes:
    """The bytes of a `file:` URL inside `allowed_local_media_path`.

    Blocking: callers run it in a thread and charge the request's budget afterwards (a
    `ByteBudget` belongs to the event loop); `max_bytes_per_item` bounds the read meanwhile.
    """
    if config.allowed_local_media_path is None:
        raise MediaError(
            MediaErrorCode.SCHEME_NOT_ALLOWED,
            "file: URLs are off on this server (start it with --allowed-local-media-path DIR "
            "to allow files under DIR)",
            item_index,
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. file://[::1/x
        raise MediaError(
            MediaErrorCode.INVALID_URL, f"invalid file: URL: {exc}", item_index
        ) from None
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise MediaError(
            MediaErrorCode.INVALID_URL, "file: URLs must be file:///absolute/path", item_index
        )
    requested = unquote(parts.path)
    if "\x00" in requested or not _encodable(requested):
        # The OS calls below would raise ValueError (embedded NUL) or UnicodeEncodeError.
        raise MediaError(
            MediaErrorCode.INVALID_URL,
            "file: URL paths may not contain NUL bytes or lone surrogates",
            item_index,
        )
    # realpath first: `..` segments and symlinks are resolved before the containment check,
    # so neither can lead outside the allowed directory.
    path = os.path.realpath(requested)
    root = os.path.realpath(config.allowed_local_media_path)
    if os.path.commonpath([root, path]) != root:
        raise MediaError(
            MediaErrorCode.PATH_NOT_ALLOWED,
            f"{requested!r} is outside the allowed media directory",
            item_index,
        )
    try:
        # O_NOFOLLOW: a symlink swapped in after realpath() is refused instead of followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise MediaError(
            MediaErrorCode.FETCH_FAILED, f"cannot open {requested!r}: {exc.strerror}", item_index
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # directories, FIFOs and devices (never-ending)
            raise MediaError(
                MediaErrorCode.FETCH_FAILED, f"{requested!r} is not a regular file", item_index
            )
        _check_item_size(info.st_size, item_index, config)
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(info.st_size)
    except OSError as exc:  # EIO, a file truncated or removed underneath us, ...
        raise MediaError(
            MediaErrorCode.FETCH_FAILED, f"cannot read {requested!r}: {exc.strerror}", item_index
        ) from None
    finally:
        os.close(fd)
    require_allowed_format(data, kind, item_index, config)
    return data


def _encodable(path: str) -> bool:
    try:
        os.fsencode(path)
    except UnicodeError:
        return False
    return True


def _check_item_size(num_bytes: int, item_index: int, config: MediaConfig) -> None:
    if num_bytes > config.max_bytes_per_item:
        raise MediaError(
            MediaErrorCode.TOO_LARGE,
            f"media item is {num_bytes} bytes; max_bytes_per_item is {config.max_bytes_per_item}",
            item_index,
        )
