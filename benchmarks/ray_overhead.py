"""What Ray Serve costs: the content-safety workload through `vlmserve serve --ray` vs the
embedded server, on the same machine, model and client (docs/ray.md).

    .venv/bin/python benchmarks/ray_overhead.py [--model tiny] [--concurrency 4]
                                               [--requests 24] [--rounds 2]

Each request is the content-safety classification of benchmarks/serve_vs_vllm.py (system
prompt, one 448x448 PNG, the strict schema, greedy, `max_tokens` 100), streamed, so that the
time to first token (TTFT) and the gaps between tokens are seen by the client. Both servers
stay up for the whole run and the rounds alternate between them, so that a neighbour on the
shared cores hits both alike. Printed: TTFT p50 and inter-token p90 of each and the
differences (the issue's bounds: +20 ms, +5 ms), req/s and its ratio; then through Ray the
same model as two aliases with one and with two replicas (req/s 1 vs 2); then the time to
first token of a model at zero replicas (replica start + engine build + warm-up + answer).
On a 2-core machine two replicas share the cores: the 1-vs-2 ratio shows the cost of
the routing there, not the gain of a second machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from serve_vs_vllm import ensure_model, make_images, problem, request_body
from server_process import Server, own_registry

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "bench-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Each alias's replicas: fixed counts for the comparison, from zero for the cold start.
# Fractions of a CPU, so that every replica fits the instance `serve --ray` starts (as many
# CPUs as the machine has); each replica still runs one torch thread.
RAY_CONFIG = {
    "request_timeout": 300,
    "ingress_num_cpus": 0.1,
    "defaults": {"num_cpus": 0.3, "max_replicas": 2, "downscale_to_zero_delay_s": 600},
    "models": {
        "bench": {"min_replicas": 1, "max_replicas": 1},
        "one": {"min_replicas": 1, "max_replicas": 1},
        "two": {"min_replicas": 2, "max_replicas": 2},
        "cold": {"min_replicas": 0, "max_replicas": 1},
    },
}
# Serve's autoscaler reads metrics pushed every 10 s by default: the cold start would wait
# for that, not for the replica.
FAST_METRICS = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.2",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.2",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass
class Run:
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    invalid: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    def add(self, other: Run) -> None:
        self.seconds += other.seconds
        self.requests += other.requests
        self.errors += other.errors
        self.invalid += other.invalid
        self.ttft += other.ttft
        self.gaps += other.gaps

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_stream(client: httpx.AsyncClient, body: dict[str, Any], run: Run) -> None:
    started = time.perf_counter()
    stamps: list[float] = []
    text: list[str] = []
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                run.errors += 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    run.errors += 1
                    return
                delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if delta:
                    stamps.append(time.perf_counter())
                    text.append(delta)
    except httpx.HTTPError:
        run.errors += 1
        return
    if not stamps:
        run.errors += 1
        return
    run.ttft.append(stamps[0] - started)
    run.gaps += [b - a for a, b in itertools.pairwise(stamps)]
    run.invalid += problem("".join(text)) is not None


async def drive(url: str, model: str, bodies: list[dict[str, Any]], concurrency: int) -> Run:
    run = Run()
    queue = list(bodies)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while queue:
                body = {**queue.pop(), "model": model, "stream": True}
                await one_stream(client, body, run)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
    run.requests = len(bodies)
    return run


def register(url: str, alias: str, folder: Path) -> None:
    body = {"alias": alias, "model_name": str(folder)}
    response = httpx.post(f"{url}/v1/models/register", json=body, headers=ADMIN, timeout=120)
    response.raise_for_status()


def warm(url: str, model: str, body: dict[str, Any], timeout: float = 900) -> float:
    """Seconds until one request for `model` is answered (a load, a replica start)."""
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/chat/completions", json={**body, "model": model}, timeout=timeout
    )
    response.raise_for_status()
    return time.perf_counter() - started


def cold_ttft(url: str, body: dict[str, Any]) -> float:
    run = asyncio.run(drive(url, "cold", [body], 1))
    if not run.ttft:
        raise RuntimeError("the request to the model at zero replicas failed")
    return run.ttft[0]


def start(folder: Path, port: int, log: Path, ray: bool) -> Server:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "vlmserve.cli", "serve", str(folder)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", "bench"]
    command += ["--admin-api-key", ADMIN_KEY, *own_registry(log)]
    if ray:
        env.update(FAST_METRICS, RAY_TMPDIR=tempfile.mkdtemp(prefix="vr-bench-", dir="/tmp"))
        command += ["--ray", "--ray-config", json.dumps(RAY_CONFIG), "--load-timeout", "900"]
    return Server("ray" if ray else "embedded", command, port, log, env)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny-model preset")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24, help="per round and server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=100)
    args = parser.parse_args()
    folder = ensure_model(args.model)
    images = make_images(8)
    bodies = [
        request_body("bench", images[i % len(images)], i, args.max_tokens)
        for i in range(args.requests)
    ]
    logs = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    servers = {
        "embedded": start(folder, free_port(), logs / "embedded.log", ray=False),
        "ray": start(folder, free_port(), logs / "ray.log", ray=True),
    }
    try:
        urls = {}
        for name, server in servers.items():
            ready = server.wait_ready(900)
            urls[name] = f"http://127.0.0.1:{server.port}"
            print(f"{name}: ready in {ready:.1f} s (logs in {logs})")
        for name in servers:  # the startup model's first load, not measured
            warm(urls[name], "bench", bodies[0])
        results = {name: Run() for name in servers}
        for _ in range(args.rounds):
            for name in servers:
                results[name].add(asyncio.run(drive(urls[name], "bench", bodies, args.concurrency)))
        # Ray's processes are not the server's children: the load average says how busy the
        # machine was (both servers and this client included).
        load = os.getloadavg()[0]
        print(f"(load average {load:.1f} on {os.cpu_count()} cores after the rounds)")
        print_comparison(results)

        for alias in ("one", "two", "cold"):
            register(urls["ray"], alias, folder)
        replicas = {}
        for alias in ("one", "two"):
            warm(urls["ray"], alias, bodies[0])
            run = Run()
            for _ in range(args.rounds):
                run.add(asyncio.run(drive(urls["ray"], alias, bodies, args.concurrency)))
            replicas[alias] = run
        one, two = replicas["one"], replicas["two"]
        print(f"\nthrough Ray, 1 replica: {one.rps:.2f} req/s; 2 replicas: {two.rps:.2f} req/s")
        print(f"  2 vs 1 replicas: x{two.rps / one.rps:.2f} (errors {one.errors}/{two.errors})")
        print(f"\nscale from zero to a first token: {cold_ttft(urls['ray'], bodies[0]):.1f} s")
    finally:
        for server in servers.values():
            server.stop()
    return 0


def print_comparison(results: dict[str, Run]) -> None:
    print(
        f"\n{'server':<10} {'req/s':>7} {'TTFT p50':>10} {'gap p90':>9} {'errors':>7} {'invalid':>8}"
    )
    for name, run in results.items():
        print(
            f"{name:<10} {run.rps:7.2f} {pct(run.ttft, 0.5) * 1e3:8.1f}ms "
            f"{pct(run.gaps, 0.9) * 1e3:7.1f}ms {run.errors:7d} {run.invalid:8d}"
        )
    ray, embedded = results["ray"], results["embedded"]
    ttft = (pct(ray.ttft, 0.5) - pct(embedded.ttft, 0.5)) * 1e3
    gap = (pct(ray.gaps, 0.9) - pct(embedded.gaps, 0.9)) * 1e3
    print(f"Ray - embedded: TTFT p50 {ttft:+.1f} ms (bound +20), inter-token p90 {gap:+.1f} ms")
    print(f"  (bound +5); req/s ratio Ray/embedded x{ray.rps / embedded.rps:.2f}")
    print(f"  mean inter-token: embedded {statistics.fmean(embedded.gaps or [0]) * 1e3:.1f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
