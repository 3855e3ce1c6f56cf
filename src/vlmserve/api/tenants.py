"""Tenants: who a request is on behalf of, which key says so, and what that key may do.

Keys come from `--api-key` (tenant `default`), `--admin-api-key` (tenant `admin`) and
`--api-keys-file` (YAML or JSON: key -> tenant and limits), re-read when the file changes.
A tenant's `id` is its identity everywhere a request leaves a trace that another could
observe: it salts the prefix cache and namespaces media UUIDs (`cache_salt`), and it is what
stored items (the Responses API, later) will record as their owner. Limits belong to the key
(requests per minute, requests at once) and answer 429 with `Retry-After`.

Keys are found by their SHA-256 digest: the server never compares secret bytes itself, so a
timing difference could at most tell digest bits of a guess, which say nothing about a key.
The file may hold `sha256:<hex>` instead of a key, so it need not hold secrets at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlmserve.api.errors import APIError

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
_LIMIT_FIELDS = ("requests_per_minute", "max_concurrent")


@dataclass(frozen=True)
class Tenant:
    """Stable across key rotation and reloads: several keys may name one tenant."""

    id: str


@dataclass(frozen=True)
class Grant:
    """What one key is: its tenant and its limits. `label` names the key in logs and errors
    without showing it; `key_id` (the key's digest) keys its limiter state."""

    tenant: Tenant
    label: str
    key_id: bytes
    requests_per_minute: int | None = None
    max_concurrent: int | None = None


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def cache_salt(tenant: Tenant | None, requested: str | None) -> str | None:
    """The engine's cache salt for a request: its tenant's, plus the salt the request asked
    for (vLLM's `cache_salt`). Without a tenant (no keys configured) only the latter."""
    if tenant is None:
        return requested
    return json.dumps([tenant.id, requested])  # unambiguous: no two pairs give one string


def _grant(key: str, entry: Any, where: str) -> tuple[bytes, Grant]:
    if not isinstance(key, str) or not key.strip() or key != key.strip():
        raise ValueError(f"{where}: keys must be non-empty strings without surrounding spaces")
    shown = key[:11] if key.startswith("sha256:") else f"{key[:4]}..."
    if not isinstance(entry, dict) or not isinstance(entry.get("tenant"), str):
        raise ValueError(f"{where}: key {shown!r} needs a mapping with a 'tenant' name")
    unknown = set(entry) - {"tenant", *_LIMIT_FIELDS}
    if unknown:
        raise ValueError(f"{where}: key {shown!r} has unknown fields {sorted(unknown)}")
    tenant = entry["tenant"].strip()
    if not tenant:
        raise ValueError(f"{where}: key {shown!r} has an empty tenant name")
    limits = {}
    for name in _LIMIT_FIELDS:
        value = entry.get(name)
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{where}: key {shown!r}: {name} must be a positive integer")
        limits[name] = value
    if key.startswith("sha256:"):
        try:
            digest = bytes.fromhex(key[len("sha256:") :])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"{where}: {shown!r}... is not sha256: and 64 hex digits")
    else:
        digest = key_digest(key)
    return digest, Grant(Tenant(tenant), f"{tenant}:{shown}", digest, **limits)


def load_keys_file(path: str | Path) -> dict[bytes, Grant]:
    """The grants in a keys file; ValueError naming the problem (never a key in full)."""
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"keys file {path} does not parse: {exc}") from None
    except yaml.YAMLError as exc:
        # Only where and what: PyYAML's message quotes the line, which may hold a key.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ValueError(f"keys file {path} does not parse{where}: {problem}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"keys file {path} must map keys to {{tenant: name, ...}}")
    grants = dict(_grant(key, entry, f"keys file {path}") for key, entry in data.items())
    if len(grants) != len(data):
        raise ValueError(f"keys file {path} names one key twice (as itself and its sha256)")
    return grants


class KeysFile:
    """A keys file, re-read when its modification time, size or inode changes (checked on
    each lookup: a stat costs microseconds). A change that does not load (a typo, the file
    half-written or gone) keeps the keys loaded before and is logged as an error: an
    operator's slip must not lock every client out."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self.grants = load_keys_file(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino

    def current(self) -> dict[bytes, Grant]:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.grants = load_keys_file(self.path)
                logger.info("reloaded %d API keys from %s", len(self.grants), self.path)
            except (OSError, ValueError) as exc:
                logger.error("keeping the previous API keys: %s", exc)
        return self.grants


class Limiter:
    """Per-key requests per minute (a token bucket holding a minute's worth) and requests
    at once. Lives on the event loop: no locks."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, when)
        self._active: dict[bytes, int] = {}

    @contextmanager
    def admit(self, grant: Grant) -> Iterator[None]:
        """Hold one of the key's slots for the block; APIError 429 when over a limit."""
        active = self._active.get(grant.key_id, 0)
        if grant.max_concurrent is not None and active >= grant.max_concurrent:
            raise APIError(
                429,
                f"this key may have {grant.max_concurrent} requests in flight at once; "
                "wait for one to finish",
                code="concurrency_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        if grant.requests_per_minute is not None:
            self._take(grant, grant.requests_per_minute)
        self._active[grant.key_id] = active + 1
        try:
            yield
        finally:
            left = self._active[grant.key_id] - 1
            if left:
                self._active[grant.key_id] = left
            else:
                del self._active[grant.key_id]

    def _take(self, grant: Grant, per_minute: int) -> None:
        now = self._clock()
        rate = per_minute / 60.0
        tokens, when = self._buckets.get(grant.key_id, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - when) * rate)
        if tokens < 1.0:
            self._buckets[grant.key_id] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise APIError(
                429,
                f"this key may send {per_minute} requests per minute; retry in {wait} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        self._buckets[grant.key_id] = (tokens - 1.0, now)


class Tenants:
    """The server's keys and their limiters. `required` is False when no key is configured:
    then /v1/* is open and requests have no tenant."""

    def __init__(
        self,
        api_key: str | None = None,
        admin_api_key: str | None = None,
        keys_file: str | Path | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.keys_file = KeysFile(keys_file) if keys_file is not None else None
        self.required = api_key is not None or self.keys_file is not None
        self._static: dict[bytes, Grant] = {}
        for key, tenant in ((api_key, "default"), (admin_api_key, "admin")):
            if key is not None:
                self._static[key_digest(key)] = Grant(Tenant(tenant), tenant, key_digest(key))
        self.limiter = Limiter(clock)

    def lookup(self, token: str) -> Grant | None:
        digest = key_digest(token)
        found = self._static.get(digest)
        if found is None and self.keys_file is not None:
            found = self.keys_file.current().get(digest)
        return found
