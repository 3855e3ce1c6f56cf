"""The bench's phases and the record kept of every request.

1. `cases`: every case once per mode (unconstrained, then constrained), one at a time.
2. `concurrency`: for each level, `requests_per_level` requests cycling through the cases,
   constrained (and unconstrained too when asked).
3. `burst`: `burst_requests` at `burst_concurrency`, in both modes.

Load stays bounded: at most `concurrency` requests in flight (the client's pool is sized to
the largest level) and a fixed number of requests per phase.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from vlmserve.safety.answers import check_answer
from vlmserve.safety.bench.cases import BenchCase
from vlmserve.safety.client import Exchange, chat_body, send_chat
from vlmserve.safety.policy import Policy

MODES = ("unconstrained", "constrained")


@dataclass(frozen=True)
class BenchConfig:
    model: str
    max_tokens: int = 256
    small_max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    stream: bool = False
    concurrency_levels: tuple[int, ...] = (1, 4, 8, 16, 32)
    requests_per_level: int = 20
    sweep_modes: tuple[str, ...] = ("constrained",)
    burst_requests: int = 50
    burst_concurrency: int = 8
    slo_ms: float = 2000.0

    def total_requests(self, num_cases: int) -> int:
        sweep = len(self.concurrency_levels) * self.requests_per_level * len(self.sweep_modes)
        return len(MODES) * (num_cases + self.burst_requests) + sweep

    def describe(self, num_cases: int) -> str:
        """The phase sizes and request settings in a line, saying whether the phases are the
        full default ones: a shortened run must say so in its report."""
        full = BenchConfig(self.model)
        sizes = (
            "concurrency_levels",
            "requests_per_level",
            "sweep_modes",
            "burst_requests",
            "burst_concurrency",
        )
        shape = (
            "default phases"
            if all(getattr(self, f) == getattr(full, f) for f in sizes)
            else "phases changed from the defaults"
        )
        levels = ",".join(map(str, self.concurrency_levels))
        return (
            f"{shape}: cases {num_cases} × {len(MODES)} modes; concurrency {levels} × "
            f"{self.requests_per_level} ({', '.join(self.sweep_modes)}); burst "
            f"{self.burst_requests} at {self.burst_concurrency} × {len(MODES)} modes; "
            f"{self.total_requests(num_cases)} requests; max_tokens {self.max_tokens} "
            f"(small {self.small_max_tokens}), temperature {self.temperature}, "
            f"stream {'on' if self.stream else 'off'}, SLO {self.slo_ms:.0f} ms"
        )

    @property
    def max_concurrency(self) -> int:
        return max(1, self.burst_concurrency, *self.concurrency_levels)


@dataclass
class Record:
    """One request: what was sent (phase, mode, case) and every check of what came back."""

    phase: str
    mode: str
    concurrency: int
    case: str
    label: str
    index: int
    status: int | None
    error: str | None
    latency_s: float
    ttft_s: float | None
    finish_reason: str | None
    completion_tokens: int | None
    content: str | None
    valid: bool  # strict JSON and schema-valid, as received
    json_ok: bool
    schema_ok: bool
    enum_ok: bool
    best_class: str | None
    correct: bool  # valid and the intended class
    fenced: bool
    recoverable: bool  # valid only once the markdown fences are stripped
    extra_fields: list[str] = field(default_factory=list)
    missing_fields: list[str] = field(default_factory=list)
    control_chars: bool = False  # raw control characters in the content
    problem: str | None = None


@dataclass
class PhaseRun:
    phase: str
    mode: str
    concurrency: int
    wall_s: float
    records: list[Record]


def _record(
    phase: str,
    mode: str,
    concurrency: int,
    case: BenchCase,
    index: int,
    exchange: Exchange,
    policy: Policy,
) -> Record:
    check = check_answer(exchange.content, policy)
    answered = exchange.error is None
    return Record(
        phase=phase,
        mode=mode,
        concurrency=concurrency,
        case=case.name,
        label=case.label,
        index=index,
        status=exchange.status,
        error=exchange.error,
        latency_s=exchange.latency_s,
        ttft_s=exchange.ttft_s,
        finish_reason=exchange.finish_reason,
        completion_tokens=exchange.completion_tokens,
        content=exchange.content,
        valid=answered and check.valid,
        json_ok=check.json_ok,
        schema_ok=check.schema_ok,
        enum_ok=check.enum_ok,
        best_class=check.best_class,
        correct=answered and check.label == case.label,
        fenced=check.fenced,
        recoverable=check.recoverable,
        extra_fields=check.extra_fields,
        missing_fields=check.missing_fields,
        control_chars=check.control_chars,
        problem=exchange.error if not answered else check.problem,
    )


class Bench:
    def __init__(
        self,
        client: httpx.AsyncClient,
        policy: Policy,
        cases: list[BenchCase],
        config: BenchConfig,
        on_request: Callable[[], None] = lambda: None,
    ) -> None:
        self.client, self.policy, self.cases, self.config = client, policy, cases, config
        self.on_request = on_request
        self._sent = 0  # request index: seeds differ per request, reproducibly

    async def run(self) -> list[PhaseRun]:
        config, runs = self.config, []
        for mode in MODES:
            runs.append(await self._phase("cases", mode, 1, self.cases))
        for level in config.concurrency_levels:
            for mode in config.sweep_modes:
                runs.append(
                    await self._phase(
                        "concurrency", mode, level, self._cycle(config.requests_per_level)
                    )
                )
        for mode in MODES:
            runs.append(
                await self._phase(
                    "burst", mode, config.burst_concurrency, self._cycle(config.burst_requests)
                )
            )
        return runs

    def _cycle(self, count: int) -> list[BenchCase]:
        return [self.cases[i % len(self.cases)] for i in range(count)]

    async def _phase(
        self, phase: str, mode: str, concurrency: int, cases: list[BenchCase]
    ) -> PhaseRun:
        semaphore = asyncio.Semaphore(concurrency)
        config = self.config

        async def one(case: BenchCase, index: int) -> Record:
            body = chat_body(
                self.policy,
                config.model,
                case.image_url,
                constrained=mode == "constrained",
                max_tokens=config.small_max_tokens if case.small_budget else config.max_tokens,
                temperature=config.temperature,
                seed=config.seed + index,
                extra_text=case.extra_text,
                stream=config.stream,
            )
            async with semaphore:
                exchange = await send_chat(self.client, body)
            self.on_request()
            return _record(phase, mode, concurrency, case, index, exchange, self.policy)

        first = self._sent
        self._sent += len(cases)
        start = time.perf_counter()
        records = await asyncio.gather(*(one(c, first + i) for i, c in enumerate(cases)))
        return PhaseRun(phase, mode, concurrency, time.perf_counter() - start, list(records))
