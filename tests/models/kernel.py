"""For tests of our C kernels: they must build wherever a C compiler is found."""

from __future__ import annotations

import os
import shutil

import pytest

from vlmserve.models import native


def require_kernel() -> native.Kernels:
    """The loaded kernels. Skip where the machine has no C compiler; fail where one exists
    and the kernels do not build with it."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) to build the native kernels with")
    kernels = native.load()
    assert kernels is not None, "the native kernels did not build (see the log)"
    return kernels
