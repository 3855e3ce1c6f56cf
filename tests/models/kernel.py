"""For tests of our C kernel: it must build wherever a C compiler is found."""

from __future__ import annotations

import os
import shutil

import pytest

from vlmserve.models import native


def require_kernel() -> None:
    """Skip where the machine has no C compiler; fail where one exists and the kernel does
    not build with it."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) to build the native attention kernel with")
    assert native.load() is not None, "the native attention kernel did not build (see the log)"
