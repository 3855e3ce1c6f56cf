"""`vlmserve classify`: files, folders and URLs classified under a policy, at most
`concurrency` at a time, by an engine in this process (the default) or a server over HTTP
(backends.py).

Results are keyed by the sha256 of the image bytes and the policy's hash, and each is on disk
(see store.py) before the next counts as done: a re-run skips every key already classified
— including identical images under other names — and retries items that failed. A failure
(unreadable file, not an image, HTTP or engine error, invalid answer) is recorded against its
item and counted; it never stops the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlmserve.safety.backends import Backend, BackendSettings, open_backend
from vlmserve.safety.client import data_url
from vlmserve.safety.policy import STANDARD_FIELDS, Policy
from vlmserve.safety.scores import flagged_classes
from vlmserve.safety.sources import SourceError, expand, read_source
from vlmserve.safety.store import ResultStore


@dataclass
class ClassifyCounts:
    classified: int = 0
    skipped: int = 0  # already in the results file, or the same bytes earlier in this run
    errors: int = 0
    classes: Counter[str] = field(default_factory=Counter)


def result_key(image_sha256: str, policy: Policy) -> str:
    return f"{image_sha256}:{policy.hash}"


async def classify(
    sources: list[str],
    policy: Policy,
    backend: Backend,
    store: ResultStore,
    concurrency: int,
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
                "model": backend.model,
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
        judgement = await backend.judge(url, seed=None)
        answer = judgement.answer
        if answer is None:
            counts.errors += 1
            problem = (
                judgement.problem if judgement.error else f"invalid answer: {judgement.problem}"
            )
            record(source, "error", error=problem, finish_reason=judgement.finish_reason, **ids)
            return
        scored: dict[str, Any] = {}
        if judgement.scores is not None:
            flags = flagged_classes(policy, judgement.scores)
            scored = {
                "scores": dict(zip(policy.class_names, judgement.scores, strict=True)),
                "flagged": any(flags.values()),
            }
        extra = {k: v for k, v in answer.items() if k not in STANDARD_FIELDS}
        record(
            source,
            "ok",
            **ids,
            **{name: answer[name] for name in STANDARD_FIELDS},
            **scored,
            extra=extra or None,
            finish_reason=judgement.finish_reason,
        )
        done.add(key)
        counts.classified += 1
        counts.classes[answer["best_class"]] += 1

    async def worker() -> None:
        for source in pending:  # one iterator shared by the workers: each source once
            await one(source)
            on_item()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def finished_keys(records: list[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in records if r.get("status") == "ok" and r.get("key")}


async def run_classify(
    inputs: list[str],
    policy: Policy,
    out: str,
    settings: BackendSettings,
    default_model: Callable[[], Path],
) -> int:
    """The command: exit 0 when every item is classified (now or before), 1 when some
    failed (each recorded in the results file with its error)."""
    sources = expand(inputs)
    store = ResultStore(out)
    done = finished_keys(store.open())
    try:
        async with open_backend(settings, policy, default_model) as backend:
            with tqdm(total=len(sources), desc="classify", unit="img", file=sys.stderr) as bar:
                counts = await classify(
                    sources, policy, backend, store, settings.connections, done, bar.update
                )
    finally:
        store.close()
    classes = ", ".join(f"{name} {n}" for name, n in counts.classes.most_common())
    print(
        f"classify: {counts.classified} classified, {counts.skipped} already done, "
        f"{counts.errors} failed ({out}){'; ' + classes if classes else ''}"
    )
    return 1 if counts.errors else 0
