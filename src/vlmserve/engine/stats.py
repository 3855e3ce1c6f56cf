"""`EngineStats`: one engine's counters and gauges at a moment, as the metrics, the readiness
watchdog and the registry read them (the same shape from an in-process engine and from an
engine process, whose child takes the snapshot and sends it over its pipe).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmserve.engine.engine import LLMEngine


@dataclass
class EngineStats:
    num_waiting: int
    num_running: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    mm_cache_hits: int
    mm_cache_misses: int
    num_preemptions: int
    grammar_cache_hits: int
    grammar_compiles: int
    grammar_compile_seconds: float
    stalled_seconds: float  # see AsyncEngine.stalled_for

    @classmethod
    def of(cls, e: LLMEngine, stalled_seconds: float) -> EngineStats:
        """`e`'s counters now (read on its own thread, or where a racy read is fine)."""
        grammar = e.guided.stats()
        return cls(
            num_waiting=len(e.scheduler.waiting),
            num_running=len(e.scheduler.running),
            kv_cache_usage=e.block_manager.usage(),
            prefix_cache_queries=e.block_manager.num_prefix_queries,
            prefix_cache_hits=e.block_manager.num_prefix_hits,
            mm_cache_hits=e.mm_cache.hits,
            mm_cache_misses=e.mm_cache.misses,
            num_preemptions=e.scheduler.num_preemptions,
            grammar_cache_hits=grammar.hits,
            grammar_compiles=grammar.misses,
            grammar_compile_seconds=grammar.compile_seconds,
            stalled_seconds=stalled_seconds,
        )
