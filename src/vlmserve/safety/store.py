"""`classify`'s results file: JSON lines, or CSV for a `.csv` path, append-only.

Each record goes to the file in one `write` on an O_APPEND descriptor, then `fsync`: a run
killed at any point leaves every finished record on disk. A kill in the middle of a large
write can still leave the last record cut short, so opening the file drops an incomplete
last record (one not ended by its newline) before anything is appended.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

COLUMNS = (
    "key",
    "sha256",
    "policy_hash",
    "source",
    "status",
    "best_class",
    "flagged",  # any class at or above its threshold (with class scores)
    "scores",  # class -> score, when the backend gives them
    "explanation",
    "extracted_text",
    "language",
    "extra",
    "finish_reason",
    "model",
    "error",
    "time",
)


# The first version's CSV header (no class scores): such a file cannot take new rows.
_V1_COLUMNS = tuple(c for c in COLUMNS if c not in ("flagged", "scores"))


class StoreError(ValueError):
    """A results file this program cannot safely append to."""


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        self._fd: int | None = None

    def open(self) -> list[dict[str, Any]]:
        """Open for appending; return the records already there (complete ones only)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        records, end = _read_csv(text, self.path) if self.csv else _read_jsonl(text, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if end < len(text.encode("utf-8")):
            os.ftruncate(self._fd, end)  # the cut-off record of a killed run
        if self.csv and end == 0:
            self._write(_csv_line(list(COLUMNS)))
        return records

    def append(self, record: dict[str, Any]) -> None:
        unknown = set(record) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result fields {sorted(unknown)}")
        if self.csv:
            row = [record.get(c) for c in COLUMNS]
            for name in ("extra", "scores", "flagged"):  # JSON inside the cell
                value = record.get(name)
                row[COLUMNS.index(name)] = (
                    "" if value is None else json.dumps(value, ensure_ascii=False)
                )
            line = _csv_line(["" if v is None else v for v in row])
        else:
            line = json.dumps({c: record.get(c) for c in COLUMNS}, ensure_ascii=False) + "\n"
        self._write(line)

    def _write(self, line: str) -> None:
        if self._fd is None:
            raise RuntimeError("ResultStore.open() first")
        data = memoryview(line.encode("utf-8"))
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _refuse_unless_ours(tail: str, start: str, path: Path) -> None:
    """Only a cut-off record of our own may be dropped, never someone else's text."""
    if not (tail.startswith(start) or start.startswith(tail)):
        raise StoreError(f"{path}: not a classify results file; not appending to it")


def _read_jsonl(text: str, path: Path) -> tuple[list[dict[str, Any]], int]:
    complete = text[: text.rfind("\n") + 1]
    _refuse_unless_ours(text[len(complete) :], '{"key":', path)
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise StoreError(f"{path}:{number}: not a JSON record; not appending to it") from None
        if not isinstance(record, dict) or "key" not in record:
            raise StoreError(f"{path}:{number}: not a classify record; not appending to it")
        records.append(record)
    return records, len(complete.encode("utf-8"))


def _read_csv(text: str, path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows up to the last one that ends in its newline, and that prefix's byte length. A
    quoted field may hold newlines, so rows are told apart by the csv reader itself, fed
    one line at a time."""
    if text.startswith(_csv_line(list(_V1_COLUMNS))):
        raise StoreError(
            f"{path}: written by an earlier vlmserve (no scores column); classify into a new file"
        )
    _refuse_unless_ours(text, _csv_line(list(COLUMNS)), path)
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
    consumed = 0

    def feed() -> Any:
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            yield line

    rows, end = [], 0
    for row in csv.reader(feed()):
        # A cut-off last row either lacks its newline or, cut right after a newline inside a
        # quoted field, lacks columns (every row we write has them all).
        if text[consumed - 1] != "\n" or len(row) != len(COLUMNS):
            break
        rows.append(row)
        end = consumed
    records = []
    for row in rows[1:]:
        record: dict[str, Any] = dict(zip(COLUMNS, row))
        for name in ("extra", "scores", "flagged"):
            record[name] = json.loads(record[name]) if record.get(name) else None
        records.append(record)
    return records, len(text[:end].encode("utf-8"))
