"""Where images come from for `classify` and `eval`: files, folders (walked in sorted order)
and http(s) URLs the user named, read into bytes with a size cap. The user's own URLs are
fetched as a download tool would; the server never sees them (it gets the bytes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MAX_IMAGE_BYTES = 64 * 1024 * 1024


class SourceError(ValueError):
    """An input that names nothing readable (a missing path, an unsupported URL)."""


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def expand(refs: list[str]) -> list[str]:
    """Files and URLs as given; folders replaced by the image files under them."""
    sources: list[str] = []
    for ref in refs:
        if is_url(ref):
            sources.append(ref)
            continue
        path = Path(ref)
        if path.is_dir():
            sources += [
                str(p)
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif path.is_file():
            sources.append(ref)
        elif "://" in ref:
            raise SourceError(f"{ref}: only http:// and https:// URLs are supported")
        else:
            raise SourceError(f"{ref}: no such file or folder")
    return sources


async def read_source(ref: str, client: httpx.AsyncClient | None = None) -> bytes:
    """The bytes of a file or URL (at most MAX_IMAGE_BYTES); OSError / SourceError on
    failure, for the caller to record against that item."""
    if not is_url(ref):
        path = Path(ref)
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size > MAX_IMAGE_BYTES:
            raise SourceError(f"{ref}: {size} bytes, more than {MAX_IMAGE_BYTES}")
        return await asyncio.to_thread(path.read_bytes)
    if client is None:
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as own:
            return await _download(own, ref)
    return await _download(client, ref)


async def _download(client: httpx.AsyncClient, url: str) -> bytes:
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise SourceError(f"{url}: HTTP {response.status_code}")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise SourceError(f"{url}: more than {MAX_IMAGE_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise SourceError(f"{url}: {exc!r}") from None
