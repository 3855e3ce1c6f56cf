"""The engine-level grammar backend: one per model, owns the tokenizer view and the cache.

`compile()` turns a request's constraint into a `CompiledGrammar` (llguidance grammar, two
validated template matchers and the shortest valid output) and caches it by constraint.
`new_request()` copies the templates into a `RequestGrammar`, which is cheap.

A compile has a deadline (`compile_timeout`): a constraint that costs more is refused
rather than holding a compile thread for tens of seconds. Failures are cached too, so the
same constraint sent again is refused at once, and callers compiling a constraint that is
already being compiled wait for that compile instead of starting their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

import llguidance
import numpy as np
import tokenizers

from vlmserve.structured.closer import (
    Nesting,
    byte_tokenizer,
    new_byte_matcher,
    shortest_completion,
)
from vlmserve.structured.closing import SEARCH_NODES
from vlmserve.structured.compiler import build_grammar
from vlmserve.structured.errors import StructuredOutputError
from vlmserve.structured.request import RequestGrammar, TokenView
from vlmserve.structured.schema import check_bounds
from vlmserve.structured.tools import PARAM as TOOLS_PARAM
from vlmserve.structured.tools import check_tool_bounds, tool_calls_grammar
from vlmserve.types import StructuredOutputsParams, ToolCallsConstraint

DEFAULT_COMPILE_TIMEOUT_S = 5.0
# A constraint refused for its compile time may compile on a quieter machine: its refusal is
# remembered this long, other failures (deterministic) as long as the cache keeps them.
TIMEOUT_FAILURE_TTL_S = 60.0


@dataclass
class CompileStats:
    """Counters for metrics: cache hits/misses and seconds spent compiling misses."""

    hits: int = 0
    misses: int = 0
    compile_seconds: float = 0.0
    failures: int = 0  # compiles that ended in an error (timeouts included)
    failure_hits: int = 0  # constraints refused from the failure cache


@dataclass(frozen=True)
class CompiledGrammar:
    key: str
    kind: str
    grammar: str  # llguidance's serialized grammar
    matcher: llguidance.LLMatcher  # template over the model vocabulary, never advanced
    byte_matcher: llguidance.LLMatcher  # template over bytes, for the closer
    min_output_tokens: int  # tokens in the shortest valid output found
    compile_seconds: float
    # That output (bytes, tokens): every request starts from it instead of searching again.
    shortest: tuple[bytes, tuple[int, ...]] | None = None


def _cache_key(params: StructuredOutputsParams) -> str:
    kind = params.kind()
    value = getattr(params, kind)
    if isinstance(value, ToolCallsConstraint):
        check_tool_bounds(value)  # before asdict, which recurses
        value = dataclasses.asdict(value)
    if kind in ("json", "structural_tag") and isinstance(value, str):
        # Invalid JSON is reported by the compile; the raw text is a fine key meanwhile.
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    elif isinstance(value, dict):  # json.dumps below recurses: bound the depth first
        check_bounds(value, f"structured_outputs.{kind}")
    # No sort_keys: property order is part of the constraint (it fixes the output order).
    return json.dumps([kind, value, params.strict if kind in ("json", "structural_tag") else None])


class StructuredBackend:
    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        vocab_size: int,
        eos_token_ids: list[int],
        cache_size: int = 256,
        compile_timeout: float | None = DEFAULT_COMPILE_TIMEOUT_S,
    ) -> None:
        if not eos_token_ids:
            raise ValueError("eos_token_ids must not be empty")
        if compile_timeout is not None and compile_timeout <= 0:
            raise ValueError(f"compile_timeout must be > 0 seconds, got {compile_timeout}")
        self.compile_timeout = compile_timeout
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer.to_str(), n_vocab=vocab_size, eos_token=self.eos_token_ids
        )
        self.tokens = self._token_view(tokenizer)
        self.stats = CompileStats()
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        # key -> (error, expiry as time.monotonic(), or None: kept until evicted)
        self._failures: OrderedDict[str, tuple[StructuredOutputError, float | None]] = OrderedDict()
        self._inflight: dict[str, Future[CompiledGrammar]] = {}
        self._lock = threading.Lock()

    def _token_view(self, tokenizer: tokenizers.Tokenizer) -> TokenView:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        special = {i for i in range(size) if self.tokenizer.is_special_token(i)}
        token_bytes = [
            b"" if i in special else self.tokenizer.decode_bytes([i]) for i in range(size)
        ]
        # Safety net ANDed into every mask: only ordinary tokens and EOS ids, never a special
        # token (<|im_start|>, <|image_pad|>) nor an id past the tokenizer (logits padding).
        allowed = np.zeros(32 * ((self.vocab_size + 31) // 32), dtype=bool)
        allowed[[i for i in range(min(size, self.vocab_size)) if i not in special]] = True
        allowed[[e for e in self.eos_token_ids if e < self.vocab_size]] = True
        words = np.packbits(allowed, bitorder="little").view(np.int32)
        vocab: dict[bytes, int] = {}
        for token_id, data in enumerate(token_bytes):
            if data:
                vocab.setdefault(data, token_id)
        return TokenView(
            token_bytes=token_bytes,
            vocab=vocab,
            max_token_bytes=max(len(b) for b in token_bytes),
            allowed_words=words,
            eos_token_ids=frozenset(self.eos_token_ids),
            fingerprint=hashlib.sha256(
                f"{self.vocab_size}:{tokenizer.to_str()}".encode()
            ).hexdigest(),
        )

    def cached(self, params: StructuredOutputsParams) -> CompiledGrammar | None:
        """The compiled constraint if the cache has it, None if it must be compiled; raises
        StructuredOutputError for a constraint that failed before. Never compiles."""
        key = self._key(params)
        with self._lock:
            return self._lookup(key)

    def compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        """Compile (or fetch from the cache) a constraint. Raises StructuredOutputError."""
        key = self._key(params)
        with self._lock:
            cached = self._lookup(key)
            if cached is not None:
                return cached
            running = self._inflight.get(key)
            if running is None:
                self._inflight[key] = Future()
        if running is not None:
            return running.result()  # the same constraint is being compiled: share it
        try:
            compiled = self._compile_uncached(params, key)
        except StructuredOutputError as exc:
            self._finish(key, exc)
            raise
        except BaseException as exc:  # a bug, not the constraint's fault: not cached
            self._finish(key, exc)
            raise
        self._finish(key, compiled)
        return compiled

    @staticmethod
    def _key(params: StructuredOutputsParams) -> str:
        try:
            return _cache_key(params)
        except StructuredOutputError:
            raise
        except ValueError as exc:
            raise StructuredOutputError(str(exc), param="structured_outputs") from exc

    def _lookup(self, key: str) -> CompiledGrammar | None:
        """Cache hit, or the remembered failure raised again; call with the lock held."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.stats.hits += 1
            return cached
        failure = self._failures.get(key)
        if failure is not None:
            error, expiry = failure
            if expiry is None or time.monotonic() < expiry:
                self._failures.move_to_end(key)
                self.stats.failure_hits += 1
                raise _again(error)
            del self._failures[key]
        return None

    def _finish(self, key: str, result: CompiledGrammar | BaseException) -> None:
        with self._lock:
            future = self._inflight.pop(key)
            if isinstance(result, CompiledGrammar):
                self.stats.misses += 1
                self.stats.compile_seconds += result.compile_seconds
                self._cache[key] = result
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            elif isinstance(result, StructuredOutputError):
                self.stats.failures += 1
                timed_out = isinstance(result.__cause__, TimeoutError)
                expiry = time.monotonic() + TIMEOUT_FAILURE_TTL_S if timed_out else None
                self._failures[key] = (result, expiry)
                while len(self._failures) > self._cache_size:
                    self._failures.popitem(last=False)
        if isinstance(result, CompiledGrammar):
            future.set_result(result)
        else:
            future.set_exception(
                _again(result) if isinstance(result, StructuredOutputError) else result
            )

    def _compile_uncached(self, params: StructuredOutputsParams, key: str) -> CompiledGrammar:
        kind = params.kind()
        # Tool calls are not a `structured_outputs` kind clients send; see tools.py.
        param = TOOLS_PARAM if kind == "tool_calls" else f"structured_outputs.{kind}"
        try:
            return self._compile_within(params, key, param, self._deadline())
        except TimeoutError as exc:
            raise StructuredOutputError(
                f"{param}: compiling this constraint took longer than {self.compile_timeout} s "
                "(the grammar compile deadline); make it smaller or simpler",
                param=param,
            ) from exc

    def _deadline(self) -> float | None:
        if self.compile_timeout is None:
            return None
        return time.monotonic() + self.compile_timeout

    def _compile_within(
        self, params: StructuredOutputsParams, key: str, param: str, deadline: float | None
    ) -> CompiledGrammar:
        def check_deadline() -> None:
            # llguidance's own steps are native and bounded by its limits; the deadline is
            # checked between them and inside the closer's search.
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError

        start = time.perf_counter()
        kind = params.kind()
        if params.tool_calls is not None:
            grammar = tool_calls_grammar(params.tool_calls)
        else:
            grammar = build_grammar(params)
        for tokenizer in (self.tokenizer, byte_tokenizer()):
            check_deadline()
            # The byte vocabulary has no special tokens: a grammar naming one fails here.
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
                grammar, tokenizer
            )
            if is_error:
                raise StructuredOutputError(
                    f"{param} is invalid: {messages[0].strip()}", param=param
                )
        check_deadline()
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        byte_matcher = new_byte_matcher(grammar)
        for m in (matcher, byte_matcher):
            if m.is_error():
                raise StructuredOutputError(f"{param} is invalid: {m.get_error()}", param=param)
        check_deadline()
        shortest = shortest_completion(byte_matcher, Nesting(), SEARCH_NODES, deadline=deadline)
        if shortest is None:
            raise StructuredOutputError(
                f"{param}: no valid output found in {SEARCH_NODES} search steps (needed for "
                "budget-aware closing): the constraint is unsatisfiable, or too complex for "
                "llguidance's lexer limits or for the closer's search",
                param=param,
            )
        request = RequestGrammar(
            matcher.deep_copy(), byte_matcher.deep_copy(), grammar, self.tokens, None
        )
        closing = request.tokens_for(shortest)
        return CompiledGrammar(
            key=key,
            kind=kind,
            grammar=grammar,
            matcher=matcher,
            byte_matcher=byte_matcher,
            min_output_tokens=len(closing),
            compile_seconds=time.perf_counter() - start,
            shortest=(shortest, tuple(closing)),
        )

    def min_output_tokens(self, compiled: CompiledGrammar) -> int:
        return compiled.min_output_tokens

    def check_budget(self, compiled: CompiledGrammar, max_tokens: int) -> None:
        """Reject up front a request whose budget cannot hold even the shortest output."""
        if max_tokens < compiled.min_output_tokens:
            raise StructuredOutputError(
                f"max_tokens={max_tokens} cannot hold a valid output for this "
                f"{compiled.kind} constraint: the shortest needs {compiled.min_output_tokens} "
                "tokens",
                param="max_tokens",
            )

    def new_request(
        self, compiled: CompiledGrammar, max_tokens: int | None = None
    ) -> RequestGrammar:
        """Per-request state. `max_tokens`: the output budget (the smaller of max_tokens and
        the context left); with it the grammar steers to a valid close before it runs out."""
        if max_tokens is not None:
            self.check_budget(compiled, max_tokens)
        return RequestGrammar(
            compiled.matcher.deep_copy(),
            compiled.byte_matcher.deep_copy(),
            compiled.grammar,
            self.tokens,
            max_tokens,
            compiled.shortest,
        )


def _again(error: StructuredOutputError) -> StructuredOutputError:
    """A fresh copy of a remembered error: one exception object raised in several threads
    would share (and grow) one traceback."""
    return StructuredOutputError(
        error.message, param=error.param, keyword=error.keyword, path=error.path
    )
