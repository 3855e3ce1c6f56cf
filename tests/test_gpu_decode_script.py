"""benchmarks/gpu_decode.py (issue 13's GPU measurement) runs end to end: its CPU dry run, so
that the script works on the day a GPU is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_dry_run_measures_every_batch_and_mode(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "gpu_decode.py"), "--device", "cpu",
            "--preset", "tiny", "--batches", "1,2", "--tokens", "32", "--skip-transformers",
            "--models", str(tmp_path), "--json", str(out),
        ],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    rows = {(row["batch"], row["mode"]): row for row in result["rows"]}
    assert set(rows) == {(b, m) for b in (1, 2) for m in ("unconstrained", "constrained")}
    assert rows[(2, "unconstrained")]["tokens"] == 2 * 31  # ignore_eos: every token counted
    for row in rows.values():
        assert row["tok_s"] > 0 and row["roofline_tok_s"] > 0
    assert result["bandwidth_bytes_s"] > 0 and result["weights_bytes"] > 0
