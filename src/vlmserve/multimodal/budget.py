"""The byte budget one request's media items share while they load concurrently."""

from __future__ import annotations

from vlmserve.multimodal.errors import MediaError, MediaErrorCode


class ByteBudget:
    """Bytes a request may still pull in. One event loop owns it: `charge` never awaits,
    so concurrent fetches of the same request cannot both pass the check."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, num_bytes: int, item_index: int) -> None:
        """Count `num_bytes` more; MediaError (413) once the request would exceed its limit."""
        if self.used + num_bytes > self.limit:
            raise MediaError(
                MediaErrorCode.TOO_LARGE,
                f"the request's media exceed max_bytes_per_request ({self.limit} bytes)",
                item_index,
            )
        self.used += num_bytes
