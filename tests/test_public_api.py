"""The names vLLM users expect at the top (`from vlmserve import LLM, SamplingParams`), and
an import of the package that stays cheap: nothing heavy until a name is used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import vlmserve

PROBE = """
import json, sys
import vlmserve
cheap = sorted(m for m in ("torch", "fastapi", "PIL") if m in sys.modules)
from vlmserve import SamplingParams, StructuredOutputsParams
after_types = "torch" in sys.modules
from vlmserve import LLM
print(json.dumps({"cheap": cheap, "after_types": after_types, "llm": LLM.__module__,
                  "params": SamplingParams(max_tokens=3).max_tokens}))
"""


def test_import_is_cheap_and_names_load_on_use() -> None:
    run = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"cheap": [], "after_types": False, "llm": "vlmserve.offline", "params": 3}


def test_every_exported_name_resolves() -> None:
    for name in vlmserve.__all__:
        assert getattr(vlmserve, name) is not None, name
    assert set(vlmserve.__all__) == {"__version__", *vlmserve._EXPORTS}
    assert "LLM" in dir(vlmserve)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = vlmserve.nope  # type: ignore[attr-defined]
