"""Cold start: request -> first token for a model that is registered but not loaded.

    .venv/bin/python benchmarks/cold_start.py [--models tiny,small] [--runs 5]
        [--vllm-runs N] [--skip-vllm] [--peer-dir DIR] [--vllm-venv DIR]

One vlmserve server runs for the whole measurement (the tiny model given on its command
line stays loaded, as another tenant would). Each preset's model is registered once; each
run unloads it (POST /v1/models/{alias}/unload), then times one streamed completion from
the request to its first token: the load on demand (weights, KV cache, warm-up) plus the
request. The same request once the model is loaded is the warm reference. The server's own
measured `load_seconds` is shown beside.

vLLM serves one model per process: switching models means restarting it, so its cold start
is timed from launching its server to the first token of the same request, one restart per
run. Its runs alternate with vlmserve's (run 1 of each, run 2 of each, ...), so both meet
the same neighbours. The CPU build is not part of CI: its scripts are looked for in
--peer-dir, else $VLMSERVE_VLLM_PEER_DIR, else peers/vllm-cpu in the shared/ folder next
to the clone (or next to the main clone of a worktree: shared_dir.py); its venv in
--vllm-venv. Without them the script says what it looked for and measures vlmserve alone.
Each vLLM start is bounded by --timeout; it needs 1-3 minutes on a loaded 2-core machine.

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
from serve_vs_vllm import REPO, ensure_model, load_average
from server_process import Server, start_vllm
from shared_dir import shared_dir

ADMIN_KEY = "cold-start-bench"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROMPT = "Describe a cold start in one sentence."
GOAL_TINY_S = 3.0
# Where the vLLM peer's scripts may live: next to a clone, then the machines' shared folder.
PEER_DIR = shared_dir() / "peers" / "vllm-cpu"


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
        failed = f"   + {len(self.failures)} failed" if self.failures else ""
        return (
            f"{self.label:<28} {len(values):>4} {statistics.median(values):8.2f} s {p95:8.2f} s "
            f"{values[0]:8.2f} s {values[-1]:8.2f} s   {load}{failed}"
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


class VlmserveCold:
    """The vlmserve server of the whole measurement, with each preset registered once."""

    def __init__(self, presets: list[str], logs: Path, timeout: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "VLMSERVE_DATA_DIR": str(logs)}
        command = [sys.executable, "-m", "vlmserve.cli", "serve", str(ensure_model("tiny"))]
        command += ["--port", str(self.port), "--served-model-name", "resident"]
        command += ["--admin-api-key", ADMIN_KEY, "--registry", str(logs / "cold_start.db")]
        self.server = Server("vlmserve", command, self.port, logs / "vlmserve-cold.log", env)
        self.server.wait_ready(timeout)
        for preset in presets:
            model = str(ensure_model(preset))
            body = {"alias": f"cold-{preset}", "model_name": model, "max_model_len": 4096}
            registered = httpx.post(
                f"{self.base}/v1/models/register", json=body, headers=HEADERS, timeout=30
            )
            registered.raise_for_status()

    def run(self, preset: str, cold: Timings, warm: Timings) -> None:
        """One cold start (unload, then the first token) and the warm request after it."""
        alias = f"cold-{preset}"
        unloaded = httpx.post(f"{self.base}/v1/models/{alias}/unload", headers=HEADERS, timeout=60)
        if unloaded.json().get("state") != "registered":
            raise RuntimeError(f"{alias} did not unload: {unloaded.text}")
        try:
            cold.first_token_s.append(first_token(self.base, alias, self.timeout))
            warm.first_token_s.append(first_token(self.base, alias, self.timeout))
        except (RuntimeError, httpx.HTTPError) as exc:
            cold.failures.append(str(exc))
            return
        card = httpx.get(f"{self.base}/v1/models/{alias}", timeout=30).json()
        cold.load_s.append(card["load_seconds"])

    def stop(self) -> None:
        self.server.stop()


def find_peer_dir(given: Path | None) -> tuple[Path | None, list[Path]]:
    """The folder holding the peer's serve.sh: the given one, else $VLMSERVE_VLLM_PEER_DIR,
    else the shared folder's; None if it has none. With the folder looked at."""
    env = os.environ.get("VLMSERVE_VLLM_PEER_DIR")
    candidates = [given] if given else [Path(env)] if env else [PEER_DIR]
    return next((c for c in candidates if (c / "serve.sh").is_file()), None), candidates


def vllm_cold(preset: str, run: int, peer: Path, venv: Path, logs: Path, timeout: float) -> float:
    """Launch vLLM on the preset's model, time launch -> first token, stop it."""
    folder = ensure_model(preset)
    port = free_port()
    log = logs / f"vllm-cold-{preset}-{run}.log"
    launched = time.perf_counter()
    server = start_vllm(peer / "serve.sh", folder, port, log, venv)
    try:
        server.wait_ready(timeout)
        remaining = max(1.0, timeout - (time.perf_counter() - launched))
        first_token(f"http://127.0.0.1:{port}", folder.name, remaining)
        return time.perf_counter() - launched
    finally:
        server.stop()


def measure(args: argparse.Namespace, peer: Path | None) -> list[Timings]:
    """vlmserve's runs and vLLM's (when `peer`), alternating run by run per preset."""
    presets = args.models.split(",")
    vlmserve = VlmserveCold(presets, args.logs, args.timeout)
    results = []
    try:
        for preset in presets:
            cold = Timings(f"vlmserve {preset}, unloaded")
            warm = Timings(f"vlmserve {preset}, loaded")
            restarted = Timings(f"vLLM {preset}, restarted")
            for run in range(max(args.runs, args.vllm_runs if peer else 0)):
                line = f"{preset} run {run + 1}:"
                if run < args.runs:
                    done = len(cold.first_token_s)
                    vlmserve.run(preset, cold, warm)
                    line += f" vlmserve {_new(cold, done)}"
                if peer is not None and run < args.vllm_runs:
                    done = len(restarted.first_token_s)
                    try:
                        restarted.first_token_s.append(
                            vllm_cold(preset, run, peer, args.vllm_venv, args.logs, args.timeout)
                        )
                    except (RuntimeError, httpx.HTTPError) as exc:
                        restarted.failures.append(str(exc).splitlines()[0])
                    line += f", vLLM {_new(restarted, done)}"
                print(line, flush=True)  # progress: a vLLM restart takes minutes
            results += [cold, warm, *([restarted] if peer is not None else [])]
    finally:
        vlmserve.stop()
    return results


def _new(timings: Timings, before: int) -> str:
    """The run just measured (`before`: how many there were), or that it failed."""
    fresh = timings.first_token_s[before:]
    return f"{fresh[0]:.2f} s" if fresh else f"failed ({timings.failures[-1][:120]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,small", help="presets, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="cold starts per model")
    parser.add_argument(
        "--vllm-runs", type=int, default=None, help="vLLM restarts per model (default: --runs)"
    )
    parser.add_argument("--skip-vllm", action="store_true", help="measure vlmserve alone")
    parser.add_argument("--peer-dir", type=Path, default=None, help="folder with serve.sh")
    parser.add_argument("--vllm-venv", type=Path, default=Path("/tmp/peer-vllm-cpu"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per start or request")
    parser.add_argument("--logs", type=Path, default=REPO / ".cache" / "bench" / "logs")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    if args.vllm_runs is None:
        args.vllm_runs = args.runs
    peer: Path | None = None
    if not args.skip_vllm:
        peer, looked = find_peer_dir(args.peer_dir)
        python = args.vllm_venv / "bin" / "python"
        missing = [] if peer else [f"serve.sh in {', '.join(map(str, looked))}"]
        if not python.is_file():
            missing.append(f"{python} (--vllm-venv)")
        if missing:
            print(
                f"vLLM CPU peer not found: no {' and no '.join(missing)}. It is not part of CI "
                "(docs/benchmarks.md); pass --peer-dir / --vllm-venv. Measuring vlmserve alone."
            )
            peer = None
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_average()}; {args.runs} runs per "
        f"model ({args.vllm_runs if peer else 0} for vLLM); request -> first streamed token of "
        "a completion (max_tokens 8)"
    )
    results = measure(args, peer)
    print(f"\n{'':<28} {'runs':>4} {'p50':>10} {'p95':>10} {'min':>10} {'max':>10}   load (server)")
    for timings in results:
        print(timings.row())
    print(f"load average at the end: {load_average()}")
    tiny = next((t for t in results if t.label == "vlmserve tiny, unloaded"), None)
    if tiny and tiny.first_token_s:
        p50 = statistics.median(tiny.first_token_s)
        verdict = "met" if p50 < GOAL_TINY_S else "NOT met"
        print(f"\ngoal: tiny cold start under {GOAL_TINY_S:g} s: {verdict} (p50 {p50:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
