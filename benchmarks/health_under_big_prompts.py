"""/health latency on a real `vlmserve serve` process while one 16 MiB prompt and eight 4 MiB
prompts are sent at once and refused (issue 8: /health under 0.5 s meanwhile).

    .venv/bin/python benchmarks/health_under_big_prompts.py [--runs 4]
    .venv/bin/python benchmarks/health_under_big_prompts.py --source before=../wt-base/src \\
        --source after=src      # two source trees side by side, runs alternating

Each source tree (`NAME=DIR`, put first on the server's PYTHONPATH; default: this checkout's
src) gets a server of its own; all stay up and the runs alternate between them, so a
neighbour on the shared cores hits each alike. Per run: /health worst, p50 and p99 (GET every
20 ms on a thread and connection of its own), how many probes answered, how long until all
nine prompts were refused, the server's CPU time meanwhile (all threads, and its event loop's
thread alone: the per-byte work that competes with /health), the cores that every other
process but this client took meanwhile (neighbours) and the load average; then per
tree the median and largest worst, p50 and p99 of all its probes, and the mean CPU times.
The prompts go over raw sockets, so the client spends no Python per byte while it sends them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
from engine_process import HealthProbe, free_port, percentile
from serve_vs_vllm import REPO, ensure_model, load_average
from server_process import NeighbourCpu, Server, own_registry

MiB = 1 << 20
PROMPT_SIZES = [16 * MiB] + [4 * MiB] * 8


def completion_request(model: str, chars: int) -> bytes:
    body = json.dumps({"model": model, "prompt": "a" * chars, "max_tokens": 1}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def send(port: int, request: bytes, statuses: list[int]) -> None:
    """Sends the whole request, reads the answer until the server closes; appends its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    statuses.append(int(answer.split(b" ", 2)[1]) if answer else 0)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of the server process, and of its main thread alone (the
    event loop's: the work that delays /health)."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    main = next(t for t in process.threads() if t.id == pid)
    return times.user + times.system, main.user_time + main.system_time


def one_run(port: int, pid: int, requests: list[bytes]) -> tuple[dict[str, float], list[float]]:
    statuses: list[int] = []
    senders = [threading.Thread(target=send, args=(port, r, statuses)) for r in requests]
    with HealthProbe(port) as probe:
        time.sleep(0.2)  # a few probes before, as a baseline
        cpu_before = cpu_seconds(pid)
        start = time.perf_counter()
        with NeighbourCpu(pid) as others:
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            refused_s = time.perf_counter() - start
            cpu_after = cpu_seconds(pid)
            others_cores = others.cores()
        time.sleep(0.1)
    if sorted(statuses) != [400] * len(requests):
        raise RuntimeError(f"expected nine 400s, got {sorted(statuses)}")
    health = probe.latencies
    summary = {
        "worst": max(health),
        "p50": percentile(health, 0.5),
        "p99": percentile(health, 0.99),
        "probes": len(health),
        "refused_s": refused_s,
        "cpu_s": cpu_after[0] - cpu_before[0],
        "loop_cpu_s": cpu_after[1] - cpu_before[1],
        "others_cores": others_cores,
    }
    return summary, health


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a source tree to serve from (repeatable; default: this checkout's src)",
    )
    parser.add_argument("--runs", type=int, default=4, help="runs per source tree")
    parser.add_argument("--model", default="tiny", help="tiny-model preset")
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("--logs", type=Path, default=REPO / ".cache" / "bench" / "logs")
    args = parser.parse_args()
    sources = [s.split("=", 1) for s in args.source] or [["this", str(REPO / "src")]]
    args.logs.mkdir(parents=True, exist_ok=True)
    folder = ensure_model(args.model)
    requests = [completion_request(folder.name, size) for size in PROMPT_SIZES]
    print(f"machine: {os.cpu_count()} CPUs, load average {load_average()}")
    servers: list[tuple[str, Server]] = []
    try:
        for name, src in sources:
            port = free_port()
            command = [sys.executable, "-m", "vlmserve.cli", "serve", str(folder)]
            command += ["--host", "127.0.0.1", "--port", str(port), "--cpu-threads", "1"]
            command += ["--served-model-name", folder.name]
            log = args.logs / f"health-{name}.log"
            command += own_registry(log)
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
            server = Server(name, command, port, log, env)
            servers.append((name, server))
            print(f"{name} ({src}): ready after {server.wait_ready(args.startup_timeout):.1f} s")
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in servers}
        probes: dict[str, list[float]] = {name: [] for name, _ in servers}
        for run in range(1, args.runs + 1):
            for name, server in servers:
                r, health = one_run(server.port, server.process.pid, requests)
                results[name].append(r)
                probes[name] += health
                print(
                    f"run {run} {name:>9}: /health worst {r['worst'] * 1000:4.0f} ms  "
                    f"p50 {r['p50'] * 1000:3.0f}  p99 {r['p99'] * 1000:4.0f}  "
                    f"({r['probes']:.0f} probes)  refused after {r['refused_s']:.2f} s  "
                    f"server CPU {r['cpu_s'] * 1000:4.0f} ms (loop {r['loop_cpu_s'] * 1000:3.0f})  "
                    f"others {r['others_cores']:.1f} cores  load {load_average()}",
                    flush=True,
                )
    finally:
        for _, server in servers:
            server.stop()
    for name, runs in results.items():
        worst = sorted(r["worst"] * 1000 for r in runs)
        # CPU times come in 10 ms ticks: their mean over the runs says more than one run.
        cpu, loop = (
            statistics.mean(r[key] * 1000 for r in runs) for key in ("cpu_s", "loop_cpu_s")
        )
        others = statistics.mean(r["others_cores"] for r in runs)
        p50, p99 = (percentile(probes[name], q) * 1000 for q in (0.5, 0.99))
        print(
            f"{name:>9}, {len(runs)} runs: /health worst median {statistics.median(worst):.0f} ms, "
            f"max {worst[-1]:.0f} ms; all {len(probes[name])} probes p50 {p50:.0f} ms, p99 "
            f"{p99:.0f} ms; server CPU per flood {cpu:.0f} ms, event loop {loop:.0f} ms; "
            f"others {others:.1f} cores"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
