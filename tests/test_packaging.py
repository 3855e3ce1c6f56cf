"""Installing and testing stay quiet: no setuptools deprecation warnings from pyproject.toml
(printed on every install), no import-linter banner in every `make test`."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_metadata_reads_without_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert [str(w.message) for w in caught] == []
    assert dist.get_name() == "vlmserve"


def test_make_lint_runs_import_linter_without_its_banner() -> None:
    done = subprocess.run(
        ["make", "-n", "-B", "lint"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    calls = [line.split() for line in done.stdout.splitlines() if "bin/lint-imports " in line]
    assert calls and all("--no-logo" in call for call in calls), done.stdout
