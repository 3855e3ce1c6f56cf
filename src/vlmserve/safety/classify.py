"""`vlmserve classify`: files, folders and URLs classified under a policy by a server over
HTTP, at most `concurrency` at a time.

Results are keyed by the sha256 of the image bytes and the policy's hash, and each is on disk
(see store.py) before the next counts as done: a re-run skips every key already classified
— including identical images under other names — and retries items that failed. A failure
(unreadable file, not an image, HTTP error, invalid answer) is recorded against its item and
counted; it never stops the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from tqdm import tqdm

from vlmserve.safety.answers import check_answer
from vlmserve.safety.client import chat_body, data_url, first_model, http_client, send_chat
from vlmserve.safety.policy import STANDARD_FIELDS, Policy
from vlmserve.safety.sources import SourceError, expand, read_source
from vlmserve.safety.store import ResultStore


@dataclass
class ClassifyCounts:
    classified: int = 0
    skipped: int = 0  # already in the results file, or the same bytes earlier in this run
    errors: int = 0
    classes: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class ClassifySettings:
    model: str
    concurrency: int = 4
    max_tokens: int = 256


def result_key(image_sha256: str, policy: Policy) -> str:
    return f"{image_sha256}:{policy.hash}"


async def classify(
    sources: list[str],
    policy: Policy,
    client: httpx.AsyncClient,
    store: ResultStore,
    settings: ClassifySettings,
    done: set[str],
    on_item: Callable[[], None] = lambda: None,
) -> ClassifyCounts:
    """Classify every source whose key is not in `done` (which grows as results land)."""
    counts = ClassifyCounts()
    pending = iter(sources)
    claimed: set[str] = set()  # keys being classified now: identical bytes are sent once

    def record(source: str, status: str, **fields: Any) -> None:
        store.append(
            {
                "source": source,
                "status": status,
                "policy_hash": policy.hash,
                "model": settings.model,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                **fields,
            }
        )

    async def one(source: str) -> None:
        try:
            image = await read_source(source)
        except (OSError, SourceError) as exc:
            counts.errors += 1
            record(source, "error", error=f"read: {exc}")
            return
        digest = hashlib.sha256(image).hexdigest()
        key = result_key(digest, policy)
        if key in done or key in claimed:
            counts.skipped += 1
            return
        claimed.add(key)
        ids = {"key": key, "sha256": digest}
        try:
            url = data_url(image)
        except ValueError as exc:
            counts.errors += 1
            record(source, "error", error=str(exc), **ids)
            return
        body = chat_body(
            policy, settings.model, url, constrained=True, max_tokens=settings.max_tokens
        )
        exchange = await send_chat(client, body)
        check = check_answer(exchange.content, policy)
        if exchange.error is not None or check.answer is None:
            counts.errors += 1
            problem = exchange.error or f"invalid answer: {check.problem}"
            record(source, "error", error=problem, finish_reason=exchange.finish_reason, **ids)
            return
        answer = check.answer
        extra = {k: v for k, v in answer.items() if k not in STANDARD_FIELDS}
        record(
            source,
            "ok",
            **ids,
            **{name: answer[name] for name in STANDARD_FIELDS},
            extra=extra or None,
            finish_reason=exchange.finish_reason,
        )
        done.add(key)
        counts.classified += 1
        counts.classes[answer["best_class"]] += 1

    async def worker() -> None:
        for source in pending:  # one iterator shared by the workers: each source once
            await one(source)
            on_item()

    await asyncio.gather(*(worker() for _ in range(settings.concurrency)))
    return counts


def finished_keys(records: list[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in records if r.get("status") == "ok" and r.get("key")}


async def run_classify(
    inputs: list[str],
    policy: Policy,
    out: str,
    base_url: str,
    api_key: str | None,
    timeout: float,
    model: str | None,
    concurrency: int,
    max_tokens: int,
) -> int:
    """The command: exit 0 when every item is classified (now or before), 1 when some
    failed (each recorded in the results file with its error)."""
    sources = expand(inputs)
    store = ResultStore(out)
    done = finished_keys(store.open())
    try:
        async with http_client(base_url, api_key, timeout, concurrency) as client:
            settings = ClassifySettings(model or await first_model(client), concurrency, max_tokens)
            with tqdm(total=len(sources), desc="classify", unit="img", file=sys.stderr) as bar:
                counts = await classify(sources, policy, client, store, settings, done, bar.update)
    finally:
        store.close()
    classes = ", ".join(f"{name} {n}" for name, n in counts.classes.most_common())
    print(
        f"classify: {counts.classified} classified, {counts.skipped} already done, "
        f"{counts.errors} failed ({out}){'; ' + classes if classes else ''}"
    )
    return 1 if counts.errors else 0
