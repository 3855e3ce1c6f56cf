"""Structured outputs in the engine loop: per-sequence grammars, their masks, the token
actually appended for a sampled one, and jump-ahead.

Per sequence and step: the grammar fills its mask row -> the sampler draws within it ->
`steer` may swap the token so that a valid close still fits the budget -> the grammar
accepts it -> forced tokens (jump-ahead, or the whole close when the budget is tight) are
appended without sampling. A complete grammar ends the sequence at once: only EOS could
follow, so ending here equals sampling it in one more step.

Compiling happens before a request reaches the engine thread. The server compiles on a pool
of its own (`submit_compile`): a few threads and a bounded number of pending compiles, so
hard constraints (each bounded by the backend's compile deadline) can neither take the
threads that tokenize and preprocess other requests nor queue without limit.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from tokenizers import Tokenizer

from vlmserve.engine.errors import EngineClosed, EngineOverloaded
from vlmserve.engine.inputs import InputError
from vlmserve.engine.sequence import Sequence
from vlmserve.structured import (
    CompiledGrammar,
    CompileStats,
    RequestGrammar,
    StructuredBackend,
    StructuredOutputError,
)
from vlmserve.structured.batch import GrammarMasks
from vlmserve.types import FinishReason, SamplingParams


class GrammarCompilerBusy(EngineOverloaded):
    """Every grammar compile slot is taken: the caller should retry later (HTTP 429)."""


class GuidedDecoding:
    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_token_ids: list[int],
        compile_timeout: float | None,
        compile_workers: int,
        max_pending_compiles: int,
    ) -> None:
        if compile_workers < 1 or max_pending_compiles < compile_workers:
            raise ValueError(
                "grammar compiles need at least 1 worker and at least as many pending slots "
                f"as workers, got {compile_workers} workers and {max_pending_compiles} slots"
            )
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.compile_timeout = compile_timeout
        self.max_pending_compiles = max_pending_compiles
        self._backend: StructuredBackend | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.grammars: dict[int, RequestGrammar] = {}  # by seq_id
        # Threads start on first use; offline callers compile on their own thread instead.
        self._pool = ThreadPoolExecutor(compile_workers, thread_name_prefix="vlmserve-grammar")
        self._pending = 0  # compiles submitted and not yet done
        self._pending_lock = threading.Lock()

    @property
    def backend(self) -> StructuredBackend:
        # Built on first use: its tokenizer tables cost ~1 s at a 152k vocabulary.
        with self._lock:
            if self._closed:
                # A compile racing close() (input processing runs off the engine thread)
                # must not build a fresh backend that nobody would free.
                raise EngineClosed("the engine is closed")
            if self._backend is None:
                self._backend = StructuredBackend(
                    self._tokenizer,
                    self.vocab_size,
                    self.eos_token_ids,
                    compile_timeout=self.compile_timeout,
                )
            return self._backend

    def close(self) -> None:
        """Drop every grammar and the compile cache (with the backend's tokenizer tables);
        compiles still queued end with EngineClosed, the pool's threads then exit."""
        with self._lock:
            self._closed = True
            self._backend = None
        with self._pending_lock:
            self._pool.shutdown(wait=False)
        self.grammars.clear()

    def stats(self) -> CompileStats:
        return self._backend.stats if self._backend is not None else CompileStats()

    def compile(self, params: SamplingParams) -> CompiledGrammar | None:
        """The request's grammar, compiled on this thread (or from the cache)."""
        if params.structured_outputs is None:
            return None
        try:
            return self.backend.compile(params.structured_outputs)
        except StructuredOutputError as exc:
            raise InputError(str(exc), exc.param or "structured_outputs") from exc

    def submit_compile(self, params: SamplingParams) -> Future[CompiledGrammar | None]:
        """The request's grammar, compiled on the grammar pool; its errors are InputErrors.

        Answered at once, without taking a slot, when there is no constraint or the cache
        knows it (compiled, or refused before). Raises GrammarCompilerBusy when
        `max_pending_compiles` compiles are already queued or running.
        """
        answer: Future[CompiledGrammar | None] = Future()
        if params.structured_outputs is None:
            answer.set_result(None)
            return answer
        backend = self._backend
        if backend is not None:  # else building it is work for the pool
            try:
                cached = backend.cached(params.structured_outputs)
            except StructuredOutputError as exc:
                answer.set_exception(InputError(str(exc), exc.param or "structured_outputs"))
                return answer
            if cached is not None:
                answer.set_result(cached)
                return answer
        with self._pending_lock:  # close() shuts the pool under it: no submit after that
            if self._closed:
                raise EngineClosed("the engine is closed")
            if self._pending >= self.max_pending_compiles:
                raise GrammarCompilerBusy(
                    f"{self._pending} grammar compiles are already queued or running; retry later"
                )
            self._pending += 1
            future = self._pool.submit(self.compile, params)
        future.add_done_callback(self._compile_done)
        return future

    def _compile_done(self, _: Future[CompiledGrammar | None]) -> None:
        with self._pending_lock:
            self._pending -= 1

    def attach(self, seq: Sequence, compiled: CompiledGrammar, max_tokens: int) -> None:
        try:
            grammar = self.backend.new_request(compiled, max_tokens)
        except StructuredOutputError as exc:
            raise InputError(str(exc), exc.param or "max_tokens") from exc
        self.grammars[seq.seq_id] = grammar

    def detach(self, seq: Sequence) -> None:
        self.grammars.pop(seq.seq_id, None)

    def masks(self, seqs: list[Sequence]) -> GrammarMasks | None:
        """The grammars of the step's sampled rows, for the sampler (which fills and applies
        only the masks that change its pick)."""
        grammars = {
            i: self.grammars[seq.seq_id]
            for i, seq in enumerate(seqs)
            if seq.seq_id in self.grammars
        }
        return GrammarMasks(grammars, self.vocab_size) if grammars else None

    def steer(self, seq: Sequence, token: int) -> int:
        grammar = self.grammars.get(seq.seq_id)
        return token if grammar is None else grammar.steer(token)

    def accept(self, seq: Sequence, token: int) -> None:
        grammar = self.grammars.get(seq.seq_id)
        if grammar is not None and not grammar.accept_token(token):
            raise RuntimeError(f"the grammar rejected token {token}, which its own mask allowed")

    def forced(self, seq: Sequence) -> list[int]:
        """Tokens to append without sampling, accepted by the grammar already. Requests that
        want logprobs go step by step (the mask then allows just the forced token): forced
        tokens have no computed distribution to report."""
        grammar = self.grammars.get(seq.seq_id)
        if grammar is None or grammar.is_terminated() or seq.params.logprobs is not None:
            return []
        tokens = grammar.forced_tokens()
        for token in tokens:
            if not grammar.accept_token(token):
                raise RuntimeError(f"the grammar rejected its own forced token {token}")
        return tokens

    def finish_if_complete(self, seq: Sequence) -> None:
        """A complete grammar admits only EOS next: end the sequence now instead of spending
        a step on it (the EOS itself is not appended)."""
        grammar = self.grammars.get(seq.seq_id)
        if grammar is None or seq.is_finished or not grammar.is_terminated():
            return
        if seq.num_output_tokens < seq.request.max_output_tokens:
            seq.finish_reason = FinishReason.STOP
        else:
            seq.finish_reason = FinishReason.LENGTH
        seq.detokenizer.flush()
