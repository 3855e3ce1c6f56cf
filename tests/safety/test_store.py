"""The results file: records survive a reopen; a record cut short by a kill is dropped
before anything is appended after it; a file that is not ours is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmserve.safety.store import COLUMNS, ResultStore, StoreError

RECORDS = [
    {"key": "k1", "status": "ok", "best_class": "alcohol", "explanation": 'says "beer"\non tap'},
    {"key": "k2", "status": "error", "error": "HTTP 500", "extra": None},
    {"key": "k3", "status": "ok", "best_class": "no_issues", "extra": {"brand": "x"}},
    {"key": "k4", "status": "ok", "flagged": False, "scores": {"alcohol": 0.25, "no_issues": 0.75}},
]


def _write(path: Path) -> None:
    store = ResultStore(path)
    assert store.open() == []
    for record in RECORDS:
        store.append(record)
    store.close()


@pytest.mark.parametrize("name", ["results.jsonl", "results.csv"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _write(path)
    store = ResultStore(path)
    records = store.open()
    store.close()
    assert [r["key"] for r in records] == ["k1", "k2", "k3", "k4"]
    assert records[0]["explanation"] == 'says "beer"\non tap'
    assert records[2]["extra"] == {"brand": "x"}
    assert records[3]["scores"] == {"alcohol": 0.25, "no_issues": 0.75}
    assert records[3]["flagged"] is False and records[0]["flagged"] is None
    assert set(records[0]) == set(COLUMNS)


@pytest.mark.parametrize("name", ["results.jsonl", "results.csv"])
def test_cut_off_last_record_is_dropped(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _write(path)
    whole = path.read_bytes()
    # Cut inside the first record's quoted newline-holding field, then inside the last one.
    for cut, complete in ((whole.index(b"on tap"), 0), (len(whole) - 5, 3)):
        path.write_bytes(whole[:cut])
        store = ResultStore(path)
        kept = store.open()
        store.append({"key": "k9", "status": "ok"})
        store.close()
        again = ResultStore(path)
        keys = [r["key"] for r in again.open()]
        again.close()
        assert keys == [r["key"] for r in kept] + ["k9"]
        assert len(kept) == complete


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("hello\n")
    with pytest.raises(StoreError, match=r"notes\.jsonl:1: not a JSON record"):
        ResultStore(jsonl).open()
    table = tmp_path / "table.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(StoreError, match="not a classify results file"):
        ResultStore(table).open()
    older = tmp_path / "v1.csv"  # round one's header, without the scores columns
    older.write_text(",".join(c for c in COLUMNS if c not in ("flagged", "scores")) + "\n")
    with pytest.raises(StoreError, match="written by an earlier vlmserve"):
        ResultStore(older).open()
    unterminated = tmp_path / "draft.jsonl"
    unterminated.write_text("my notes, no newline")
    with pytest.raises(StoreError, match="not a classify results file"):
        ResultStore(unterminated).open()
    assert unterminated.read_text() == "my notes, no newline"  # never truncated
    with pytest.raises(ValueError, match="unknown result fields"):
        store = ResultStore(tmp_path / "ok.jsonl")
        store.open()
        store.append({"key": "k", "colour": "red"})
