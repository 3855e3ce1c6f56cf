"""Prometheus metrics. One registry per app, so several apps (tests) never share counters.

Every series about a model carries its alias as the label `model`:
- engine gauges and counters (caches, preemptions, grammar compiles) and the registry's
  state (loaded models, each model's state, footprint, waiting requests) are read through
  the model registry at scrape time rather than pushed: they cost nothing between scrapes,
  and metrics hold no engine, so an unloaded model's memory is really freed;
- request timings and tokens are observed per request, under the model it used;
- loads, load failures, unloads and evictions are counted from the registry's events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.engine.stats import EngineStats
from vlmserve.registry import EventKind, ModelEvent, ModelState, ModelStatus
from vlmserve.types import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


EngineStatsSource = Callable[[], Iterable[tuple[str, EngineStats]]]  # (model, stats) pairs
ModelsSource = Callable[[], Iterable[ModelStatus]]  # the registry's listing

_GAUGES = (
    ("num_requests_waiting", "Sequences waiting to be scheduled", "num_waiting"),
    ("num_requests_running", "Sequences in the running batch", "num_running"),
    ("kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", "kv_cache_usage"),
    (
        "engine_stalled_seconds",
        "Seconds the engine has held requests without completing a step (0: idle or moving)",
        "stalled_seconds",
    ),
)
_COUNTERS = (
    ("prefix_cache_queries", "Prefix-cache block lookups", "prefix_cache_queries"),
    ("prefix_cache_hits", "Prefix-cache block hits", "prefix_cache_hits"),
    ("mm_cache_hits", "Vision-embedding cache hits", "mm_cache_hits"),
    ("mm_cache_misses", "Vision-embedding cache misses", "mm_cache_misses"),
    ("num_preemptions", "Sequences preempted for KV-cache space", "num_preemptions"),
    ("grammar_cache_hits", "Grammar compile-cache hits", "grammar_cache_hits"),
    ("grammar_compiles", "Grammars compiled (cache misses)", "grammar_compiles"),
    ("grammar_compile_seconds", "Seconds spent compiling grammars", "grammar_compile_seconds"),
)


class _EngineCollector(Collector):
    def __init__(self, stats: EngineStatsSource) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        per_model = list(self.stats())
        for name, doc, attr in _GAUGES:
            gauge = GaugeMetricFamily(f"vlmserve_{name}", doc, labels=["model"])
            for model, s in per_model:
                gauge.add_metric([model], getattr(s, attr))
            yield gauge
        for name, doc, attr in _COUNTERS:
            counter = CounterMetricFamily(f"vlmserve_{name}", doc, labels=["model"])
            for model, s in per_model:
                counter.add_metric([model], getattr(s, attr))
            yield counter


class _RegistryCollector(Collector):
    def __init__(self, models: ModelsSource) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        listed = list(self.models())
        yield GaugeMetricFamily(
            "vlmserve_models_loaded",
            "Models with an engine in memory (ready, or draining before an unload)",
            value=sum(1 for m in listed if m.loaded_revision is not None),
        )
        state = GaugeMetricFamily(
            "vlmserve_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        memory = GaugeMetricFamily(
            "vlmserve_model_memory_bytes",
            "Measured footprint of each loaded model",
            labels=["model"],
        )
        waiting = GaugeMetricFamily(
            "vlmserve_model_requests_waiting",
            "Requests waiting for a model to be ready",
            labels=["model"],
        )
        for m in listed:
            for name in ModelState:
                state.add_metric([m.alias, name.value], float(m.state is name))
            if m.loaded_revision is not None and m.memory_bytes is not None:
                memory.add_metric([m.alias], m.memory_bytes)
            waiting.add_metric([m.alias], m.waiting)
        yield from (state, memory, waiting)


class Metrics:
    def __init__(self, stats: EngineStatsSource, models: ModelsSource) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vlmserve_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "vlmserve_time_to_first_token_seconds",
            "Arrival to first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vlmserve_inter_token_latency_seconds",
            "Time between streamed tokens",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vlmserve_e2e_request_latency_seconds",
            "Arrival to last token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vlmserve_prompt_tokens",
            "Prompt tokens processed (images included)",
            ["model"],
            registry=r,
        )
        self.generation_tokens = Counter(
            "vlmserve_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.forced_tokens = Counter(
            "vlmserve_forced_tokens", "Tokens appended by grammar jump-ahead", ["model"], registry=r
        )
        self.media_fetch = Histogram(
            "vlmserve_media_fetch_seconds",
            "Fetching and decoding one media item",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.media_bytes = Counter(
            "vlmserve_media_fetch_bytes", "Bytes of media received", registry=r
        )
        self.model_events = {
            kind: Counter(f"vlmserve_model_{name}", doc, ["model"], registry=r)
            for kind, name, doc in (
                (EventKind.LOADED, "loads", "Loads that made a model (or a new revision) ready"),
                (EventKind.LOAD_FAILED, "load_failures", "Loads that failed"),
                (EventKind.UNLOADED, "unloads", "Unloads other than evictions (idle, admin)"),
                (EventKind.EVICTED, "evictions", "Unloads that made room for another model"),
            )
        }
        self.load_seconds = Histogram(
            "vlmserve_model_load_seconds",
            "Measured load time: weights, KV cache, engine start and warm-up",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(stats))
        r.register(_RegistryCollector(models))

    def on_model_event(self, event: ModelEvent) -> None:
        """Counts the registry's lifecycle events (subscribe it to the registry)."""
        self.model_events[event.kind].labels(event.alias).inc()
        if event.kind is EventKind.LOADED and event.seconds is not None:
            self.load_seconds.labels(event.alias).observe(event.seconds)

    def observe_media(self, seconds: float, num_bytes: int) -> None:
        self.media_fetch.observe(seconds)
        self.media_bytes.inc(num_bytes)


class RequestTimer:
    """Token timing of one request to `model`, fed each `RequestOutput` as it arrives."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics = metrics
        self.model = model
        self.start = time.monotonic()
        self.last: float | None = None
        self.num_tokens = 0

    def observe(self, output: RequestOutput) -> None:
        m = self.metrics
        now = time.monotonic()
        total = sum(len(c.token_ids) for c in output.outputs)
        new = total - self.num_tokens
        if new > 0:
            if self.last is None:
                m.ttft.labels(self.model).observe(now - self.start)
            else:
                # Several tokens may land in one output (n > 1, forced tokens): spread evenly.
                itl = m.itl.labels(self.model)
                for _ in range(new):
                    itl.observe((now - self.last) / new)
            self.last = now
            self.num_tokens = total
        if output.finished:
            m.e2e.labels(self.model).observe(now - self.start)
            m.prompt_tokens.labels(self.model).inc(len(output.prompt_token_ids))
            m.generation_tokens.labels(self.model).inc(total)
            forced = sum(c.num_forced_tokens for c in output.outputs)
            m.forced_tokens.labels(self.model).inc(forced)


class RequestCountMiddleware:
    """Counts responses by route template and status. Paths no route matches share one
    label, so a scanner cannot blow up the label set."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[Route]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _label(self, scope: Scope) -> str:
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                return route.path
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # No response at all: the client left and the handler was stopped (nginx's 499).
        status: dict[str, Any] = {"code": 499}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if status["code"] == 499:  # nothing sent: the catch-all guard outside answers 500
                status["code"] = 500
            raise
        finally:
            self.metrics.requests.labels(self._label(scope), str(status["code"])).inc()
