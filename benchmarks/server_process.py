"""Server processes for HTTP benchmarks: start in a session of their own, wait until
they are ready, sample the process tree's peak RSS, stop the whole group, and measure
the CPU that other processes take meanwhile (2 shared cores: neighbours matter)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil


class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled every 0.2 s in a
    thread (vLLM runs its engine core in a child process: the parent alone says little)."""

    def __init__(self) -> None:
        self.peak = 0
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def watching(self) -> bool:
        return self._pid is not None

    def start(self, pid: int) -> None:
        self._pid = pid
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                root = psutil.Process(self._pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.peak / 2**20


class Server:
    """A server started in a session of its own, so that stopping it ends its children too."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        log: Path,
        env: dict[str, str],
        server_log: Path | None = None,
        ready_path: str = "/ready",
    ) -> None:
        self.name, self.port, self.log, self.server_log = name, port, log, server_log
        # vlmserve binds its port before the model loads (/v1/models answers meanwhile): only
        # /ready says the model loaded and generated. vLLM binds once loaded: /v1/models.
        self.ready_path = ready_path
        self.pid_file: Path | None = None  # where a launcher that backgrounds it writes its id
        self.memory = TreeMemory()
        self.started = time.perf_counter()
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, timeout: float) -> float:
        """Seconds from launch until `ready_path` answers 200. With `pid_file`, the launcher
        (vLLM's serve.sh) backgrounds the server, writes its id there and exits 0 once ready."""
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        pid_file = self.pid_file
        if pid_file is None:
            self.memory.start(self.process.pid)
        while time.perf_counter() - self.started < timeout:
            if pid_file and not self.memory.watching and pid_file.is_file():
                text = pid_file.read_text().strip()
                if text:
                    self.memory.start(int(text))
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            code = self.process.poll()
            if code is not None and (pid_file is None or code != 0):
                raise RuntimeError(f"{self.name} exited during start-up; log:\n{self._tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; log:\n{self._tail()}")

    def _tail(self, lines: int = 25) -> str:
        logs = [self.log, *([self.server_log] if self.server_log else [])]
        return "\n".join(
            line
            for log in logs
            if log.is_file()
            for line in log.read_text(errors="replace").splitlines()[-lines:]
        )

    def pause(self) -> None:
        """Stop every process of the server (SIGSTOP to its group): an idle server may still
        spin (vLLM's engine core kept up to a core busy), and it must not take CPU from the
        server being measured."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> float:
        """Stop the whole session (its process group: the server outlives serve.sh there)
        and return the peak RSS in MiB."""
        peak = self.memory.stop()
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGCONT)  # a paused server handles SIGTERM only once resumed
            os.killpg(group, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                self.process.poll()  # reap the launcher, or the group never empties
                os.killpg(group, 0)  # raises once no process is left in the group
                time.sleep(0.2)
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return peak


class NeighbourCpu:
    """CPU used by everything but the server tree and this client, in cores. The load
    average cannot tell: it counts the server under test too."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _own(self) -> float:
        procs = [psutil.Process()]
        with contextlib.suppress(psutil.NoSuchProcess):
            if self.server_pid is not None:
                root = psutil.Process(self.server_pid)
                procs += [root, *root.children(recursive=True)]
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def __enter__(self) -> NeighbourCpu:
        self.start = (time.perf_counter(), self._busy(), self._own())
        return self

    def cores(self) -> float:
        wall, busy, own = self.start
        elapsed = time.perf_counter() - wall
        return max(0.0, (self._busy() - busy) - (self._own() - own)) / elapsed

    def __exit__(self, *exc: object) -> None:
        pass


def own_registry(log: Path) -> list[str]:
    """`--registry` flags for a benchmark's vlmserve: a registry file of its own next to its
    log, emptied first. Without them `serve` records the benchmark's model in the user's
    registry (~/.local/share/vlmserve), and every later `vlmserve serve` lists it."""
    db = log.with_suffix(".db")
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    return ["--registry", str(db)]


def start_vllm(serve_sh: Path, folder: Path, port: int, log: Path, venv: Path) -> Server:
    """vLLM's CPU build on `folder`, started by the peer's `serve.sh` (which backgrounds the
    server and writes its pid next to `log`). Ready once its port answers /v1/models: vLLM
    opens it after the model is loaded."""
    pid_file = log.with_suffix(".pid")
    pid_file.unlink(missing_ok=True)
    env = {**os.environ, "VENV": str(venv), "LOG": str(log), "PIDFILE": str(pid_file)}
    command = ["bash", str(serve_sh), str(folder), str(port)]
    launcher_log = log.with_suffix(".launcher.log")
    server = Server("vLLM", command, port, launcher_log, env, log, ready_path="/v1/models")
    server.pid_file = pid_file
    return server
