"""Long steps show progress: a bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pytest
import torch

from vlmserve.models.loader import read_checkpoint
from vlmserve.models.progress import Progress, step
from vlmserve.models.tiny import make_tiny_model


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vlmserve.models.progress"]


def test_counted_work_logs_its_share_when_not_a_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vlmserve")
    with Progress("reading", total=4, unit="tensors", stream=io.StringIO(), log_every=0) as p:
        for _ in range(4):
            p.update()
    said = messages(caplog)
    assert said[:4] == [f"reading: {n}/4 tensors ({n * 25}%), 0 s" for n in range(1, 5)]
    assert said[-1].startswith("reading: done in ") and said[-1].endswith(" s (4 tensors)")


def test_quiet_between_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vlmserve")
    with Progress("reading", total=1000, stream=io.StringIO(), log_every=3600) as p:
        for _ in range(1000):
            p.update()
    assert messages(caplog) == []  # "done" too: a step this short is logged at debug only
    caplog.set_level(logging.DEBUG, logger="vlmserve")
    with Progress("reading", total=1, stream=io.StringIO(), log_every=3600) as p:
        p.update()
    assert messages(caplog)[0].startswith("reading: done in 0.0 s")


def test_opaque_step_beats_while_it_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vlmserve")
    with step("training", stream=io.StringIO(), log_every=0.05):
        time.sleep(0.6)
    said = messages(caplog)
    assert any(m.startswith("training: still running, ") for m in said), said
    assert said[-1].startswith("training: done in ")


def test_a_terminal_gets_a_bar() -> None:
    terminal = Terminal()
    with Progress("reading", total=10, unit="tensors", stream=terminal) as p:
        p.update(5)
        p.heartbeat()  # a redraw now (tqdm redraws on updates at most every 0.1 s)
    assert "reading:  50%" in terminal.getvalue() and "5/10 " in terminal.getvalue()


def test_make_tiny_model_reports_its_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vlmserve")
    make_tiny_model(tmp_path, tokenizer_size=300)
    said = messages(caplog)
    assert any(m.startswith("training a 300-token tokenizer: done in ") for m in said), said
    assert any(m.startswith("drawing random weights: done in ") for m in said), said


def test_reading_a_checkpoint_reports_its_step(
    tiny_qwen2_vl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vlmserve")
    tensors = read_checkpoint(tiny_qwen2_vl, torch.float32, torch.device("cpu"))
    said = messages(caplog)
    done = f"loading weights from {tiny_qwen2_vl}: done in "
    assert tensors and any(m.startswith(done) for m in said), said
