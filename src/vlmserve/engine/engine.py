"""The engine: accepts requests and advances them one `step()` at a time.

    step = schedule -> encode pending media -> run the model -> sample -> append and check stops

Single-threaded by design: `AsyncEngine` runs it on one thread; `LLM` calls it in a loop.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable

import torch

from vlmserve.config import EngineConfig
from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.chunks import encode_media, seq_chunk
from vlmserve.engine.detokenizer import IncrementalDetokenizer
from vlmserve.engine.errors import EngineClosed
from vlmserve.engine.guided import GuidedDecoding
from vlmserve.engine.inputs import InputError, InputProcessor, ProcessedInput
from vlmserve.engine.kv_sizing import plan_kv_cache
from vlmserve.engine.loading import LoadedModel, load_checkpoint
from vlmserve.engine.memory import release_memory, tensor_bytes
from vlmserve.engine.mm_cache import MultiModalCache
from vlmserve.engine.outputs import make_request_output
from vlmserve.engine.prompts import PromptInput, to_prompt
from vlmserve.engine.scheduler import ScheduledBatch, Scheduler
from vlmserve.engine.scoring import ScoringPass
from vlmserve.engine.sequence import Request, Sequence
from vlmserve.engine.stopping import append_token, check_stop
from vlmserve.engine.token_checks import check_token_ids
from vlmserve.runner.model_runner import ModelRunner, kv_block_bytes
from vlmserve.runner.sampler import SamplingRow, sample
from vlmserve.types import FinishReason, RequestOutput, SamplingParams

logger = logging.getLogger(__name__)


class LLMEngine:
    """One model's engine, built around a loaded checkpoint (`build_engine` loads and builds).

    Lifecycle: requests come and go until `close()`, which frees everything the engine holds
    (KV cache, weights, vision embeddings, grammars) even while others still reference the
    engine object; after it every call raises `EngineClosed`."""

    def __init__(self, config: EngineConfig, loaded: LoadedModel) -> None:
        self.config = config
        self.device, self.dtype = loaded.device, loaded.dtype
        self.model, self.model_config = loaded.model, loaded.model_config
        self.tokenizer = loaded.tokenizer
        self.closed = False
        # Steps that computed tokens: the progress a watchdog looks for (a step that
        # schedules nothing while requests wait is not progress).
        self.num_batches = 0
        self.kv_plan = plan_kv_cache(
            config,
            self.model_config,
            kv_block_bytes(self.model, config.block_size, self.dtype),
            self.device,
            self.dtype,
        )
        self.max_model_len = self.kv_plan.max_model_len
        self.num_kv_blocks = num_blocks = self.kv_plan.num_blocks
        self.block_manager = BlockManager(
            num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            config.enable_chunked_prefill,
        )
        self.runner = ModelRunner(
            self.model,
            self.device,
            self.dtype,
            num_blocks,
            config.block_size,
            config.quantization,
        )
        self.mm_cache = MultiModalCache(config.mm_cache_bytes)
        self.inputs = InputProcessor(
            self.tokenizer,
            self.model_config,
            loaded.image_config,
            self.mm_cache,
            config.mm_limits,
            self.max_model_len,
        )
        self.requests: dict[str, Request] = {}
        # Requests whose every sequence finished inside add_request (a grammar forced the
        # whole output): reported by the next step, which owes them their final output.
        self._finished_at_admission: list[Request] = []
        self._seq_ids = itertools.count()
        self._seed_rng = torch.Generator().manual_seed(config.seed)
        self.stop_ids = frozenset(self.model_config.eos_token_ids)
        self.guided = GuidedDecoding(
            self.tokenizer.tokenizer,
            self.model_config.vocab_size,
            list(self.model_config.eos_token_ids),
            config.grammar_compile_timeout,
            config.grammar_compile_workers,
            config.max_pending_grammar_compiles,
        )
        self.scoring = ScoringPass(
            self.scheduler,
            self.tokenizer.tokenizer,
            self.model_config.vocab_size,
            self.max_model_len,
            lambda: next(self._seq_ids),
            self._release,
        )

    # -- requests ---------------------------------------------------------------------------
    def process_input(self, prompt: PromptInput) -> ProcessedInput:
        """A typed `Prompt` as is; vLLM's string and dict forms are converted here, once."""
        self._check_open()
        return self.inputs.process(to_prompt(prompt))

    def prepare(self, prompt: PromptInput, params: SamplingParams) -> ProcessedInput:
        """Everything about a request that can run off the engine thread: tokenizing,
        media preprocessing, grammar compilation. Raises InputError."""
        processed = self.process_input(prompt)
        processed.grammar = self.guided.compile(params)
        return processed

    def add_request(
        self, request_id: str, prompt: PromptInput | ProcessedInput, params: SamplingParams
    ) -> Request:
        self._check_open()
        if request_id in self.requests:
            raise InputError(f"request id {request_id!r} is already in use", "request_id")
        check_token_ids(params, self.model_config.vocab_size)
        processed = prompt if isinstance(prompt, ProcessedInput) else self.prepare(prompt, params)
        if processed.grammar is None and params.structured_outputs is not None:
            processed.grammar = self.guided.compile(params)
        room = self.max_model_len - len(processed.token_ids)
        if params.max_tokens is not None and params.max_tokens > room:
            raise InputError(
                f"max_tokens={params.max_tokens} does not fit: the prompt is "
                f"{len(processed.token_ids)} tokens and the context is {self.max_model_len}, "
                f"so at most {room} tokens can be generated",
                "max_tokens",
            )
        max_out = params.max_tokens if params.max_tokens is not None else room
        blocks = -(-(len(processed.token_ids) + max_out) // self.block_manager.block_size)
        if blocks > self.block_manager.num_blocks - 1:
            raise InputError(
                f"the prompt plus max_tokens needs {blocks} KV-cache blocks; the cache has "
                f"{self.block_manager.num_blocks - 1}",
                "max_tokens",
            )
        request = Request(
            request_id,
            processed.prompt,
            processed.token_ids,
            processed.mm_items,
            processed.mrope_positions,
            processed.mrope_delta,
            params,
            max_out,
            cache_salt=processed.cache_salt,
        )
        for index in range(params.n):
            seq = Sequence(
                next(self._seq_ids),
                request,
                index,
                list(processed.token_ids),
                IncrementalDetokenizer(
                    self.tokenizer.tokenizer,
                    params.stop,
                    params.include_stop_str_in_output,
                    params.skip_special_tokens,
                ),
                generator=self._generator(params, index),
            )
            request.sequences.append(seq)
        if processed.grammar is not None:
            for seq in request.sequences:
                self.guided.attach(seq, processed.grammar, max_out)  # may raise InputError
        for seq in request.sequences:
            if not seq.is_finished:  # else a sibling failed below
                try:
                    self._append_forced(seq)  # a grammar may force the first tokens, or all
                except RuntimeError as exc:
                    self._fail(seq, exc)
            if seq.is_finished:
                # Its whole output is known: it never needs a step, a KV block or its grammar.
                self._release(seq)
            else:
                self.scheduler.add(seq)
        self.requests[request_id] = request
        if request.finished:
            # No step will sample it, so no step would report it: the next one does.
            request.metrics.first_token_time = time.time()
            self._finished_at_admission.append(request)
        return request

    def add_scoring_request(
        self,
        request_id: str,
        prompt: PromptInput | ProcessedInput,
        continuations: list[list[int]],
        top_logprobs: int = 0,
    ) -> Request:
        """Teacher-forced log-probabilities of `continuations` (token id lists) after
        `prompt`, one completion each (engine/scoring.py); `top_logprobs` adds the most
        likely tokens at every scored position."""
        self._check_open()
        if request_id in self.requests:
            raise InputError(f"request id {request_id!r} is already in use", "request_id")
        processed = prompt if isinstance(prompt, ProcessedInput) else self.process_input(prompt)
        request = self.scoring.new_request(request_id, processed, continuations, top_logprobs)
        self.requests[request_id] = request
        return request

    def _generator(self, params: SamplingParams, index: int) -> torch.Generator | None:
        if params.greedy:
            return None
        seed = (
            params.seed + index
            if params.seed is not None
            else int(torch.randint(0, 2**62, (1,), generator=self._seed_rng))
        )
        return torch.Generator().manual_seed(seed)

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        self._finished_at_admission = [r for r in self._finished_at_admission if r is not request]
        for seq in request.sequences:
            if not seq.is_finished:
                seq.finish_reason = FinishReason.ABORT
            self._release(seq)
        return make_request_output(request, finished=True)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Abort every request and free the engine's memory: KV cache, weights, vision
        embeddings, grammars. Idempotent; call it from the thread that runs `step()` (or
        once that thread has stopped)."""
        if self.closed:
            return
        self.closed = True
        for request_id in list(self.requests):
            self.abort(request_id)
        self.guided.close()
        self.mm_cache.clear()
        # The runner holds the KV tensors and the second reference to the weights.
        del self.runner, self.model
        release_memory(self.device)

    def memory_bytes(self) -> int:
        """Bytes of the tensors this engine holds (weights, buffers, KV cache), counted from
        the live tensors rather than the config: the footprint a registry budgets with and
        expects back when it closes the engine. 0 once closed."""
        if self.closed:
            return 0
        module = self.model
        weights: Iterable[torch.Tensor] = (
            itertools.chain(module.parameters(), module.buffers())
            if isinstance(module, torch.nn.Module)
            else ()
        )
        return tensor_bytes(itertools.chain(weights, self.runner.kv_caches))

    def _check_open(self) -> None:
        if self.closed:
            raise EngineClosed("the engine is closed")

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        self._check_open()
        touched = {r.request_id: r for r in self._finished_at_admission}
        self._finished_at_admission.clear()
        batch = self.scheduler.schedule()
        if not batch.empty:
            self.num_batches += 1
            sampling, logits = self._run(batch)
            if sampling:
                self._sample(sampling, logits)
            touched.update({seq.request.request_id: seq.request for seq in sampling})
            touched.update(self.scoring.advance())
        return self._collect(touched)

    def _run(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor]:
        """Encode the batch's pending media, run the model, commit the computed KV blocks.
        Returns the sequences whose last token was computed (they sample) and their logits;
        scoring rows go to the scoring pass."""
        now = time.time()
        for seq in batch.sequences:
            if seq.request.metrics.first_scheduled_time is None:
                seq.request.metrics.first_scheduled_time = now
        encode_media(batch, self.runner, self.mm_cache)
        chunks = [seq_chunk(seq, n) for seq, n in zip(batch.sequences, batch.num_tokens)]
        logits = self.runner.execute(chunks)
        sampling: list[Sequence] = []
        for seq, chunk, n in zip(batch.sequences, chunks, batch.num_tokens):
            seq.num_computed_tokens += n
            self.block_manager.commit(seq)
            if chunk.needs_logits:
                sampling.append(seq)
        return sampling, self.scoring.take(batch.sequences, chunks, logits)

    def _release(self, seq: Sequence) -> None:
        self.guided.detach(seq)
        self.scheduler.finish(seq)

    def _append_forced(self, seq: Sequence) -> None:
        """Jump-ahead: tokens the grammar forces go in without sampling; their keys and
        values are computed in the next step together with the next sampled position."""
        for token in self.guided.forced(seq):
            seq.token_ids.append(token)
            seq.num_forced_tokens += 1
            check_stop(seq, token, self.stop_ids)
            if seq.is_finished:
                break
        self.guided.finish_if_complete(seq)

    def _fail(self, seq: Sequence, error: Exception) -> None:
        logger.error("request %s failed: %s", seq.request.request_id, error)
        for sibling in seq.request.sequences:
            if not sibling.is_finished:
                sibling.finish_reason = FinishReason.ERROR
            self._release(sibling)
        seq.request.error = str(error)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        rows = []
        for seq in seqs:
            p = seq.params
            blocked: list[int] = []
            if seq.num_output_tokens < p.min_tokens:
                blocked = sorted(set(p.stop_token_ids) | (set() if p.ignore_eos else self.stop_ids))
            rows.append(
                SamplingRow(
                    p, seq.request.prompt_token_ids, seq.output_token_ids, seq.generator, blocked
                )
            )
        out = sample(logits, rows, self.guided.masks(seqs))
        now = time.time()
        for i, seq in enumerate(seqs):
            if seq.is_finished:  # a sibling failed this step
                continue
            metrics = seq.request.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            try:
                token = self.guided.steer(seq, out.token_ids[i])
                self.guided.accept(seq, token)
                append_token(seq, out, i, token, self.tokenizer.tokenizer, self.stop_ids)
                if not seq.is_finished:
                    self._append_forced(seq)
            except RuntimeError as exc:  # a grammar engine limit: never emit unchecked output
                self._fail(seq, exc)
            if seq.is_finished:
                self._release(seq)

    def _collect(self, touched: dict[str, Request]) -> list[RequestOutput]:
        outputs = []
        for request in touched.values():
            finished = request.finished
            if finished:
                request.metrics.finished_time = time.time()
                request.metrics.num_cached_tokens = max(
                    s.num_cached_tokens for s in request.sequences
                )
                self.requests.pop(request.request_id, None)
            outputs.append(make_request_output(request, finished))
        return outputs


def build_engine(config: EngineConfig) -> LLMEngine:
    """Load `config.model` and build its engine. Blocking (disk, maybe network: run it off an
    event loop) and free of side effects beyond the engine: no thread is started and no
    process-wide setting is touched (`set_cpu_threads` is the process owner's)."""
    return LLMEngine(config, load_checkpoint(config))
