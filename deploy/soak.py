"""Soak: mixed traffic against one real `vlmserve serve` process on loopback, then proof that
nothing leaked. Bounded in every wait; exits 1 listing every failed check.

    .venv/bin/python deploy/soak.py                       # issue 15's form: 10 min, 32 clients
    .venv/bin/python deploy/soak.py --duration 60 --concurrency 8 --health-p99 0.5   # CI's

Each client loops over a mix: plain chat, a strict JSON schema (the answer must validate),
a one-option `choice` with n=2 (finished at admission: the engine-wedge case), n=3, an
inline image, a completion, a stream read to `[DONE]`, a stream dropped after its first
chunk, a request abandoned while it waits or runs, and bad requests (each must be a 400).
A prober asks `/health` every 100 ms, a sampler reads the server's resident memory.

Checks: no request answered other than expected (no 5xx, no 429/503 at this load, every
constrained answer valid); after the traffic the engine is empty (`/metrics`: no request
waiting or running, no KV block in use); resident memory at the end within `--rss-growth`
of what it was once warmed up (after `--warmup` seconds, the clients joining one by one
over its first half); `/health` p99 under `--health-p99`; SIGTERM ends the server with
status 0. The report (JSON) goes to `--report`, a summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from PIL import Image

MODEL = "soak"
READY_TIMEOUT_S = 300
IDLE_TIMEOUT_S = 120
EXIT_TIMEOUT_S = 60
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["safe", "unsafe"]},
        "score": {"type": "integer"},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, kind: str, status: int, seconds: float) -> None:
        self.statuses[(kind, status)] += 1
        self.latencies.setdefault(kind, []).append(seconds)

    def fail(self, kind: str, problem: str) -> None:
        if len(self.failures) < 50:  # the first ones say enough
            self.failures.append(f"{kind}: {problem}")


def chat(content: Any = "Say something.", **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 12}
    return {**body, **fields}


def png_url(rng: random.Random) -> str:
    buffer = io.BytesIO()
    color = tuple(rng.randrange(256) for _ in range(3))
    Image.new("RGB", (56, 56), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def contents(response: httpx.Response) -> list[str]:
    return [choice["message"]["content"] for choice in response.json()["choices"]]


class Traffic:
    def __init__(self, client: httpx.AsyncClient, tally: Tally, seed: int) -> None:
        self.client = client
        self.tally = tally
        self.rng = random.Random(seed)

    async def post(
        self, kind: str, path: str, body: dict[str, Any], expect: int
    ) -> httpx.Response | None:
        start = time.monotonic()
        response = await self.client.post(path, json=body)
        self.tally.record(kind, response.status_code, time.monotonic() - start)
        if response.status_code != expect:
            self.tally.fail(kind, f"status {response.status_code}: {response.text[:200]}")
            return None
        return response

    async def plain(self) -> None:
        await self.post("chat", "/v1/chat/completions", chat(), 200)

    async def schema(self) -> None:
        fmt = {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True},
        }
        response = await self.post(
            "json_schema", "/v1/chat/completions", chat(response_format=fmt, max_tokens=60), 200
        )
        if response is not None:
            for text in contents(response):
                try:
                    jsonschema.validate(json.loads(text), SCHEMA)
                except (ValueError, jsonschema.ValidationError) as exc:
                    self.tally.fail("json_schema", f"invalid answer {text!r}: {exc}")

    async def forced(self) -> None:
        body = chat(structured_outputs={"choice": ["yes"]}, n=2)
        response = await self.post("forced_choice", "/v1/chat/completions", body, 200)
        if response is not None and contents(response) != ["yes", "yes"]:
            self.tally.fail("forced_choice", f"answers {contents(response)}")

    async def several(self) -> None:
        response = await self.post("n3", "/v1/chat/completions", chat(n=3, temperature=1.0), 200)
        if response is not None and len(response.json()["choices"]) != 3:
            self.tally.fail("n3", "not 3 choices")

    async def image(self) -> None:
        parts = [
            {"type": "image_url", "image_url": {"url": png_url(self.rng)}},
            {"type": "text", "text": "?"},
        ]
        await self.post("image", "/v1/chat/completions", chat(parts), 200)

    async def completion(self) -> None:
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12}
        await self.post("completion", "/v1/completions", body, 200)

    async def stream(self, drop: bool) -> None:
        kind = "stream_dropped" if drop else "stream"
        start = time.monotonic()
        body = chat(stream=True, max_tokens=24, temperature=0, stop=None)
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            last = ""
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    last = line
                    if drop:
                        break  # the client leaves mid-stream
        self.tally.record(kind, response.status_code, time.monotonic() - start)
        if response.status_code != 200 or (not drop and last != "data: [DONE]"):
            self.tally.fail(kind, f"status {response.status_code}, last event {last[:80]!r}")

    async def abandoned(self) -> None:
        body = chat(max_tokens=64, temperature=0, stop=None)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                self.client.post("/v1/chat/completions", json=body), self.rng.uniform(0, 0.3)
            )
        self.tally.record("abandoned", 0, 0.0)

    async def bad(self) -> None:
        body = self.rng.choice(
            [
                chat(max_tokens=0),
                chat(temperature=-1),
                {"model": MODEL, "messages": []},
                chat(bogus_field=1),
            ]
        )
        await self.post("bad_input", "/v1/chat/completions", body, 400)

    async def one(self) -> None:
        mix: list[tuple[Callable[[], Awaitable[None]], int]] = [
            (self.plain, 3), (self.schema, 2), (self.forced, 1), (self.several, 1), (self.image, 2),
            (self.completion, 1), (lambda: self.stream(False), 2), (lambda: self.stream(True), 1),
            (self.abandoned, 1), (self.bad, 1),
        ]  # fmt: skip
        action = self.rng.choices([m for m, _ in mix], weights=[w for _, w in mix])[0]
        try:
            await action()
        except httpx.HTTPError as exc:
            self.tally.fail("transport", repr(exc))


def is_error(line: str) -> bool:
    with contextlib.suppress(ValueError):
        return json.loads(line).get("level") in ("error", "critical")
    return "Traceback" in line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def gauge(metrics: str, name: str) -> float:
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + "{")
    ]
    return sum(values)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_ready(base: str, process: subprocess.Popen[bytes]) -> float:
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        while time.monotonic() - start < READY_TIMEOUT_S:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} before /ready")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/ready")).status_code == 200:
                    return time.monotonic() - start
            await asyncio.sleep(0.2)
    raise RuntimeError(f"/ready not 200 within {READY_TIMEOUT_S} s")


async def soak(args: argparse.Namespace, base: str, pid: int) -> dict[str, Any]:
    tally, health, rss = Tally(), [], []
    curve: list[tuple[int, int]] = []  # (seconds, MiB)
    deadline = time.monotonic() + args.duration
    warmed_at = time.monotonic() + min(args.warmup, args.duration / 2)
    baseline: int | None = None
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    timeout = httpx.Timeout(120)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:

        async def worker(seed: int, delay: float) -> None:
            await asyncio.sleep(delay)
            traffic = Traffic(client, tally, seed)
            while time.monotonic() < deadline:
                await traffic.one()

        async def prober() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=10) as own:  # its own connection
                while time.monotonic() < deadline:
                    start = time.monotonic()
                    status = (await own.get("/health")).status_code
                    health.append(time.monotonic() - start)
                    if status != 200:
                        tally.fail("health", f"status {status}")
                    await asyncio.sleep(0.1)

        async def sampler() -> None:
            nonlocal baseline
            started = time.monotonic()
            while time.monotonic() < deadline:
                rss.append(rss_bytes(pid))
                if len(rss) % 15 == 1:  # every 30 s: the curve says warm-up from leak
                    curve.append((round(time.monotonic() - started), rss[-1] >> 20))
                if baseline is None and time.monotonic() >= warmed_at:
                    baseline = rss[-1]
                await asyncio.sleep(2)

        # Clients join one by one over the first half of the warm-up, so that every batch
        # size from 1 up is seen before the baseline. The CPU matmuls compile a kernel per
        # batch size bucket once (models/buckets.py); started all at once, the batch was
        # never small until the traffic ended, and the kernels compiled then (~35 MiB) read
        # as growth at the end.
        ramp = min(args.warmup, args.duration / 2) / 2
        tasks = [
            worker(args.seed + i, ramp * i / args.concurrency) for i in range(args.concurrency)
        ]
        await asyncio.gather(*tasks, prober(), sampler())
        # Abandoned requests end server-side a moment later: wait for an empty engine.
        idle_deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            metrics = (await client.get("/metrics")).text
            busy = gauge(metrics, "vlmserve_num_requests_running") + gauge(
                metrics, "vlmserve_num_requests_waiting"
            )
            if busy == 0 or time.monotonic() > idle_deadline:
                break
            await asyncio.sleep(0.5)
    final_rss = rss_bytes(pid)
    kv = gauge(metrics, "vlmserve_kv_cache_usage_ratio")
    growth = final_rss / baseline - 1 if baseline else 0.0
    health_p99 = percentile(health, 0.99)
    checks = {
        "no unexpected answer": not tally.failures,
        "engine empty after the traffic": busy == 0 and kv == 0,
        f"RSS growth <= {args.rss_growth:.0%}": growth <= args.rss_growth,
        f"/health p99 < {args.health_p99 * 1000:.0f} ms": health_p99 < args.health_p99,
    }
    return {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "requests": sum(tally.statuses.values()),
        "statuses": {f"{k} {s}": n for (k, s), n in sorted(tally.statuses.items())},
        "latency_p50_p99_s": {
            k: [round(statistics.median(v), 3), round(percentile(v, 0.99), 3)]
            for k, v in sorted(tally.latencies.items())
            if k != "abandoned"
        },
        "failures": tally.failures,
        "health_s": {
            "count": len(health),
            "p50": percentile(health, 0.5),
            "p99": health_p99,
            "max": max(health, default=0),
        },
        "rss_mib": {
            "warmed_up": (baseline or 0) >> 20,
            "final": final_rss >> 20,
            "max": max(rss, default=0) >> 20,
            "growth": round(growth, 4),
            "curve_s_mib": curve,
        },
        "after": {"running_plus_waiting": busy, "kv_cache_usage_ratio": kv},
        "checks": checks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=600, help="seconds of traffic (default 600)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="clients (default 32)")
    parser.add_argument(
        "--warmup", type=float, default=60, help="seconds before the RSS baseline (default 60)"
    )
    parser.add_argument(
        "--rss-growth", type=float, default=0.10, help="allowed RSS growth (default 0.10)"
    )
    parser.add_argument("--health-p99", type=float, default=0.1, help="seconds (default 0.1)")
    parser.add_argument("--model", help="model folder (default: the tiny random model)")
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="vlmserve-soak-") as tmp:
        log = Path(tmp) / "serve.log"
        command = [
            sys.executable,
            "-m",
            "vlmserve.cli",
            "serve",
            *([args.model] if args.model else []),
        ]
        command += ["--served-model-name", MODEL, "--port", str(port), "--cpu-threads", "1"]
        command += ["--registry", str(Path(tmp) / "registry.db"), "--max-num-seqs", "32"]
        # A small vision cache fills within the warm-up (every soak image is new): RSS growth
        # after it is a leak, not the 256 MiB default cache filling.
        command += ["--mm-cache-bytes", "16MiB"]
        command += ["--log-format", "json", "--log-level", "warning", "--shutdown-timeout", "30"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            ready_s = asyncio.run(wait_ready(base, process))
            print(
                f"soak: server ready in {ready_s:.1f} s on {base}; {args.concurrency} clients for {args.duration:g} s",
                flush=True,
            )
            report = asyncio.run(soak(args, base, process.pid))
            report["ready_s"] = round(ready_s, 1)
            process.send_signal(signal.SIGTERM)
            status = process.wait(EXIT_TIMEOUT_S)
            report["checks"]["SIGTERM -> exit 0"] = status == 0
            report["exit_status"] = status
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(
                f"soak: {exc}\n--- server log (tail) ---\n{log.read_text(errors='replace')[-4000:]}"
            )
            return 1
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        errors = [line for line in log.read_text(errors="replace").splitlines() if is_error(line)]
        report["server_errors_logged"] = errors[:20]
        report["checks"]["no error logged by the server"] = not errors
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text + "\n")
    print(text)
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("soak: " + ("FAILED: " + "; ".join(failed) if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
