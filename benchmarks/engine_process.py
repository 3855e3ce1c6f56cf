"""The engine in the server's process vs in a process of its own (`--engine-process`), side
by side in one run, on `serve_vs_vllm.py`'s content-safety workload.

    .venv/bin/python benchmarks/engine_process.py [--models tiny] [--levels 1,8,32]

Both servers stay up for the whole run and the levels alternate between them (a neighbour on
the shared cores hits both alike). Per level and mode: req/s and output tok/s (best round,
median next to it), p50/p95 latency, schema-valid count, and the latency of GET /health
polled every 20 ms from a thread of its own while the level runs (issue 8's target: p99 under
100 ms at concurrency 32); then the ratios engine-process / in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from serve_vs_vllm import (
    REPO,
    LevelResult,
    ensure_model,
    load_average,
    make_images,
    request_body,
    run_level,
)
from server_process import Server, own_registry

MODES = {"in-process": [], "engine-process": ["--engine-process"]}
HEALTH_EVERY_S = 0.02


@dataclass
class Measured:
    level: LevelResult
    health: list[float]  # seconds per GET /health during the level

    @property
    def tok_per_s(self) -> float:
        return self.level.completion_tokens / self.level.seconds


@dataclass
class ModeResult:
    name: str
    startup_s: float = float("nan")
    peak_rss_mib: float = float("nan")
    rounds: dict[int, list[Measured]] = field(default_factory=dict)

    def best(self, concurrency: int) -> Measured:
        return max(self.rounds[concurrency], key=lambda m: m.level.req_per_s)


class HealthProbe:
    """GET /health every HEALTH_EVERY_S on a thread of its own (its own connection), so the
    client's event loop being busy with the level's answers does not count as the server's."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/health"
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                client.get(self.url).raise_for_status()
                self.latencies.append(time.perf_counter() - start)
                self._stop.wait(HEALTH_EVERY_S)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def drive(servers: list[tuple[Server, ModeResult]], model: str, args: Any) -> None:
    images = make_images(args.images)
    limits = httpx.Limits(max_connections=max(args.levels))

    async def level(server: Server, bodies: list[dict[str, Any]], conc: int) -> Measured:
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            with HealthProbe(server.port) as probe:
                measured = await run_level(client, bodies, conc, server.memory.pid)
        return Measured(measured, probe.latencies)

    warm = [request_body(model, images[i], -1 - i, args.max_tokens) for i in range(len(images))]
    for server, _ in servers:
        await level(server, warm, 1)
    for _ in range(args.rounds):
        for concurrency, count in zip(args.levels, args.requests):
            bodies = [
                request_body(model, images[i % len(images)], i, args.max_tokens)
                for i in range(count)
            ]
            for server, result in servers:
                measured = await level(server, bodies, concurrency)
                result.rounds.setdefault(concurrency, []).append(measured)


def run_model(preset: str, args: Any) -> list[ModeResult]:
    folder = ensure_model(preset)
    running: list[tuple[Server, ModeResult]] = []
    try:
        for offset, (name, flags) in enumerate(MODES.items()):
            env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
            port = args.port + offset if args.port else free_port()
            command = [sys.executable, "-m", "vlmserve.cli", "serve", str(folder), *flags]
            command += ["--host", "127.0.0.1", "--port", str(port)]
            command += ["--served-model-name", folder.name]
            log = args.logs / f"{name}-{preset}.log"
            command += own_registry(log)
            server = Server(name, command, port, log, env)
            result = ModeResult(name)
            running.append((server, result))
            result.startup_s = server.wait_ready(args.startup_timeout)
            print(f"  {name}: ready after {result.startup_s:.1f} s; load {load_average()}")
        asyncio.run(drive(running, preset, args))
    finally:
        for server, result in running:
            result.peak_rss_mib = server.stop()
    return [result for _, result in running]


def print_table(model: str, results: list[ModeResult]) -> None:
    print(f"\n== {model} ==  (load average after: {load_average()})")
    for r in results:
        print(f"{r.name:<15} start-up {r.startup_s:5.1f} s   peak RSS {r.peak_rss_mib:6.0f} MiB")
    print(
        f"{'mode':<15} {'conc':>4} {'req/s':>6} {'median':>6} {'tok/s':>7} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'valid':>9} {'/health p50':>11} {'p99':>6} {'max':>6} {'others':>6}"
    )
    for r in results:
        for concurrency, rounds in r.rounds.items():
            best = r.best(concurrency)
            health = [h for m in rounds for h in m.health]
            print(
                f"{r.name:<15} {concurrency:>4} {best.level.req_per_s:>6.2f} "
                f"{statistics.median(m.level.req_per_s for m in rounds):>6.2f} "
                f"{best.tok_per_s:>7.1f} {best.level.percentile(0.5) * 1e3:>7.0f} "
                f"{best.level.percentile(0.95) * 1e3:>7.0f} "
                f"{sum(m.level.valid for m in rounds):>4}/{sum(m.level.requests for m in rounds):<4} "
                f"{percentile(health, 0.5) * 1e3:>8.1f} ms {percentile(health, 0.99) * 1e3:>6.1f} "
                f"{max(health, default=float('nan')) * 1e3:>6.1f} "
                f"{max(m.level.others for m in rounds):>6.2f}"
            )
    inproc, separate = results
    print("ratios engine-process / in-process (best rounds): higher is better")
    for concurrency in inproc.rounds:
        a, b = separate.best(concurrency), inproc.best(concurrency)
        print(
            f"  conc {concurrency:>2}: req/s {a.level.req_per_s / b.level.req_per_s:5.2f}x   "
            f"tok/s {a.tok_per_s / b.tok_per_s:5.2f}x"
        )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny", help="tiny-model presets, comma-separated")
    parser.add_argument("--levels", type=_ints, default=[1, 8, 32])
    parser.add_argument("--requests", type=_ints, default=[16, 32, 64])
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="repeats of all levels")
    parser.add_argument("--images", type=int, default=8, help="distinct images, reused in turn")
    parser.add_argument("--port", type=int, default=0, help="first of two (default: free ones)")
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("--logs", type=Path, default=REPO / ".cache" / "bench" / "logs")
    args = parser.parse_args()
    if len(args.requests) == 1:
        args.requests *= len(args.levels)
    if len(args.requests) != len(args.levels):
        parser.error("--requests needs one count, or one per level")
    args.logs.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_average()}; levels {args.levels}, "
        f"requests {args.requests} x {args.rounds} rounds, max_tokens {args.max_tokens}"
    )
    for preset in args.models.split(","):
        print_table(preset, run_model(preset, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
