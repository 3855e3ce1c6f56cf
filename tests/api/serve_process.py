"""A real `vlmserve serve` process on a free loopback port, for what only a process shows:
signals, exit statuses, the log it writes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.children import spawn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    log: Path  # stdout and stderr

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log.read_text()}"
            time.sleep(0.05)

    def exit_status(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log = self.log.read_text()
            raise AssertionError(f"still running after {timeout} s:\n{log}") from None


@contextlib.contextmanager
def serve(model: Path, tmp_path: Path, *flags: str, ready_timeout: float = 180) -> Iterator[Served]:
    """A server for `model`, ready (GET /ready 200) when yielded; killed on exit if still
    running."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "vlmserve.cli", "serve", str(model), "--port", str(port)]
    command += ["--cpu-threads", "1", *flags]
    with log.open("wb") as out:
        process = spawn(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{served.base}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
