"""The one error type of the media layer: a client mistake or a policy refusal, never a 500.

The API layer maps `MediaError` to an OpenAI-style error body with `status` as the HTTP status.
"""

from __future__ import annotations

import enum


class MediaErrorCode(enum.StrEnum):
    BLOCKED_ADDRESS = "blocked_address"  # loopback, private, link-local, metadata, ...
    DOMAIN_NOT_ALLOWED = "domain_not_allowed"
    PORT_NOT_ALLOWED = "port_not_allowed"
    SCHEME_NOT_ALLOWED = "scheme_not_allowed"
    INVALID_URL = "invalid_url"
    FETCH_FAILED = "fetch_failed"  # connection refused, HTTP error status, ...
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"  # not image/* (or video/*)
    UNSUPPORTED_FORMAT = "unsupported_format"  # real bytes are not an allowed format
    MIME_MISMATCH = "mime_mismatch"  # a data: URL's declared type differs from its bytes
    CORRUPT_DATA = "corrupt_data"
    DECOMPRESSION_BOMB = "decompression_bomb"
    PATH_NOT_ALLOWED = "path_not_allowed"  # file: URL outside allowed_local_media_path
    UUID_MISS = "uuid_miss"  # a media UUID the cache does not hold


class MediaError(Exception):
    """A media item was refused. `item_index` is its position among the request's media items."""

    def __init__(self, code: MediaErrorCode, message: str, item_index: int | None = None) -> None:
        self.code = code
        self.message = message
        self.item_index = item_index
        # 413 tells the client that retrying with the same payload cannot succeed.
        self.status = 413 if code is MediaErrorCode.TOO_LARGE else 400
        where = "" if item_index is None else f"media item {item_index}: "
        super().__init__(f"{where}{message}")
