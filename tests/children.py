"""Processes the tests start: each dies with the test run that started it.

A server started by a test and not stopped (pytest killed by a CI timeout, a crashed
fixture) would otherwise keep its port and two cores' worth of threads for as long as the
machine runs: one outlived its killed pytest for 47 minutes and slowed everything after it.
Linux delivers SIGKILL to the child when its parent dies (`PR_SET_PDEATHSIG`)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1
# Resolved in the parent: the child between fork and exec should only make the call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(command, **kwargs)` for a child that must not outlive the tests."""
    return subprocess.Popen(command, preexec_fn=_die_with_parent, **kwargs)
