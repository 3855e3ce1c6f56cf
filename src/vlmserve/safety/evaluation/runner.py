"""`vlmserve eval`'s data path: the labelled dataset (JSON lines), and predictions from a
backend (an engine in this process, or a server over HTTP; backends.py) under the policy's
prompt and strict schema, `trials` times per item, reduced to a majority vote per item, with
the class scores of the scoring pass where the backend gives them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlmserve.safety.backends import Backend
from vlmserve.safety.client import data_url
from vlmserve.safety.evaluation.trials import Vote, majority_vote
from vlmserve.safety.policy import Policy
from vlmserve.safety.sources import SourceError, is_url, read_source


@dataclass(frozen=True)
class LabelledItem:
    id: str
    image: str  # a path (resolved against the dataset's folder) or an http(s) URL
    label: str


@dataclass(frozen=True)
class Answer:
    best_class: str | None  # only for a valid answer
    problem: str | None  # why it is invalid, or the request's error
    finish_reason: str | None
    error: bool  # no answer came (transport, HTTP status, unreadable image)


@dataclass(frozen=True)
class ItemResult:
    item: LabelledItem
    answers: tuple[Answer, ...]
    vote: Vote
    # The policy's class scores (its temperature applied), per class; the same in every
    # trial (they do not depend on sampling). None when the backend gives none.
    scores: list[float] | None


def load_dataset(path: str | Path, classes: tuple[str, ...]) -> list[LabelledItem]:
    """One JSON object per line with `image` and `label` (and optionally `id`, default the
    image; other keys are kept by the generator for people and ignored here)."""
    path = Path(path)
    items: list[LabelledItem] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: must be a JSON object")
        image, label = record.get("image"), record.get("label")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where}: image: must be a path or URL string")
        if label not in classes:
            raise ValueError(f"{where}: label: {label!r} is not a policy class {list(classes)}")
        item_id = record.get("id", image)
        if not isinstance(item_id, str) or item_id in seen:
            raise ValueError(f"{where}: id: {item_id!r} is not a string or appears twice")
        seen.add(item_id)
        resolved = image if is_url(image) else str((path.parent / image).resolve())
        items.append(LabelledItem(item_id, resolved, label))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


@dataclass(frozen=True)
class EvalSettings:
    model: str
    trials: int = 1
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 256
    concurrency: int = 4


async def predict(
    backend: Backend,
    items: list[LabelledItem],
    policy: Policy,
    settings: EvalSettings,
    on_answer: Callable[[], None] = lambda: None,
) -> list[ItemResult]:
    """Every item `trials` times, one after the other (they share the cached prefix), at most
    `concurrency` items in flight; trial t uses seed + t, so repeated trials differ only when
    the temperature is above 0."""
    semaphore = asyncio.Semaphore(settings.concurrency)
    scores: dict[str, list[float]] = {}

    async def ask(item: LabelledItem, url: str, trial: int) -> Answer:
        judgement = await backend.judge(url, settings.seed + trial)
        on_answer()
        if judgement.scores is not None:
            scores.setdefault(item.id, judgement.scores)
        return Answer(
            judgement.best_class, judgement.problem, judgement.finish_reason, judgement.error
        )

    async def one(item: LabelledItem) -> ItemResult:
        async with semaphore:
            try:
                url = data_url(await read_source(item.image))
            except (OSError, SourceError, ValueError) as exc:
                for _ in range(settings.trials):
                    on_answer()
                failed = Answer(None, f"image: {exc}", None, error=True)
                answers = [failed] * settings.trials
            else:
                answers = [await ask(item, url, t) for t in range(settings.trials)]
        vote = majority_vote([a.best_class for a in answers], policy.class_names)
        return ItemResult(item, tuple(answers), vote, scores.get(item.id))

    return list(await asyncio.gather(*(one(item) for item in items)))
