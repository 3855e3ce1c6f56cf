"""Recorded outputs ("golden files") that optimisations must reproduce token for token.

A golden file holds the outputs of a fixed set of cases and a fingerprint of what, besides
our code, decides them: the tokenizers (trained on this Python's standard library, so another
Python installation has another vocabulary) and the torch version (random logits and
numerics). Under another fingerprint the recording says nothing about our code, so the test
is skipped with the reason; with the same fingerprint every output must be identical.

Record (only from a commit whose outputs are the reference, e.g. main before an
optimisation): `VLMSERVE_RECORD_GOLDEN=1 pytest tests/...`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

RECORD = os.environ.get("VLMSERVE_RECORD_GOLDEN") == "1"


def fingerprint(*tokenizer_json: str) -> str:
    digest = hashlib.sha256(torch.__version__.encode())
    for text in tokenizer_json:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def check_golden(path: Path, key: str, print_: str, outputs: dict[str, Any]) -> None:
    """Compare `outputs` (case name -> JSON-able output) with the recording under `key` of
    `path`, made with fingerprint `print_`; in record mode, store them instead."""
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    if RECORD:
        recorded[key] = {"fingerprint": print_, "outputs": outputs}
        path.write_text(json.dumps(recorded, indent=0, sort_keys=True) + "\n")
        return
    if key not in recorded:
        pytest.fail(f"no recording {key!r} in {path.name}; record it from main first")
    entry = recorded[key]
    if entry["fingerprint"] != print_:
        pytest.skip(
            f"{path.name}[{key}] was recorded with other tokenizers or torch "
            f"({entry['fingerprint']} here {print_}); re-record it from main to use it here"
        )
    expected = entry["outputs"]
    assert sorted(outputs) == sorted(expected)
    differ = [name for name in sorted(expected) if outputs[name] != expected[name]]
    assert not differ, (
        f"{len(differ)}/{len(expected)} cases differ from the recording, first "
        f"{differ[0]}: {outputs[differ[0]]} != {expected[differ[0]]}"
    )
