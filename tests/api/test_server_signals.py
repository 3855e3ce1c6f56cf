"""`vlmserve serve` as a real process: SIGTERM ends it with exit code 0 (containers and
Kubernetes read anything else as a crash)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.children import spawn


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"server exited early:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{path.read_text()}"
        time.sleep(0.1)


def test_sigterm_exits_zero(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "vlmserve.cli", "serve", str(tiny_qwen2_vl)]
    command += ["--host", "127.0.0.1", "--port", "0", "--cpu-threads", "1"]
    with log.open("wb") as out:
        proc = spawn(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
    try:
        wait_for_text(log, "Application startup complete", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert "Finished server process" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
