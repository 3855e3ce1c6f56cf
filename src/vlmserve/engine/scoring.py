"""Teacher-forced scoring: the log-probability of each of several given continuations after
one shared prompt (vLLM's prompt logprobs, for many continuations at once).

A scoring request runs as ordinary sequences through the scheduler, so batching, chunked
prefill, preemption, abort and close apply to it unchanged. With C the continuations'
longest common prefix and D_k what follows it in continuation k:

1. the *head*, prompt + C: the logits of its last len(C) + 1 positions give every token of
   C and every D_k[0] (one forward over the prompt, whatever the number of continuations);
2. once the head is computed, its full blocks are in the prefix cache and one *branch* per
   continuation with len(D_k) > 1 runs prompt + C + D_k[:-1], queued ahead of new arrivals:
   the cache serves the prompt, so a branch computes only the prompt's last partial block
   and its own tokens; its logits give D_k[1:].

Scored positions are never served from the prefix cache (`Sequence.logits_from`). Logits
are the model's raw ones (log-softmax over the whole vocabulary): no sampling parameter,
penalty or grammar touches them. The output is a `RequestOutput` with one `CompletionOutput`
per continuation: `token_ids` the continuation, `logprobs` each token's `{id: Logprob}`
(logprob and rank; with `top_logprobs`, also the most likely tokens at that position),
`cumulative_logprob` their sum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from vlmserve.engine.detokenizer import IncrementalDetokenizer
from vlmserve.engine.inputs import InputError, ProcessedInput
from vlmserve.engine.scheduler import Scheduler
from vlmserve.engine.sequence import Request, Sequence
from vlmserve.runner.model_runner import SeqChunk
from vlmserve.types import (
    MAX_TOP_LOGPROBS,
    CompletionOutput,
    FinishReason,
    Logprob,
    RequestOutput,
    SamplingParams,
)

MAX_CONTINUATIONS = 1024  # each may become a sequence; a request is not a batch job


def _common_prefix(continuations: list[list[int]]) -> int:
    first = continuations[0]
    length = min(len(c) for c in continuations)
    for i in range(length):
        if any(c[i] != first[i] for c in continuations):
            return i
    return length


@dataclass(eq=False)
class ScoringState:
    continuations: list[list[int]]
    common: int  # tokens every continuation starts with
    prompt_len: int
    texts: list[str]  # the continuations decoded
    logprobs: list[list[Logprob | None]]  # per continuation, per token, as they are computed
    # The `top_logprobs` most likely tokens at each scored position, when asked for (vLLM's
    # prompt logprobs report them; echo with logprobs on /v1/completions needs them).
    top_logprobs: int = 0
    alternatives: list[list[dict[int, Logprob]]] = field(default_factory=list)
    head: Sequence | None = None
    branches: dict[int, int] = field(default_factory=dict)  # seq_id -> continuation index

    def targets(self, seq: Sequence, position: int) -> list[tuple[int, int]]:
        """(continuation, token index) pairs the logits at `position` of `seq` predict."""
        if seq is self.head:
            j = position - (self.prompt_len - 1)
            if j < self.common:  # a shared token: one value for every continuation
                return [(k, j) for k in range(len(self.continuations))]
            return [(k, j) for k, c in enumerate(self.continuations) if len(c) > j]
        k = self.branches[seq.seq_id]
        return [(k, position - self.prompt_len + 1)]


class ScoringPass:
    """The engine's scoring requests: admission, the rows of logits they own in a step, and
    moving each from its head to its branches to its output."""

    def __init__(
        self,
        scheduler: Scheduler,
        tokenizer: Tokenizer,
        vocab_size: int,
        max_model_len: int,
        new_seq_id: Callable[[], int],
        release: Callable[[Sequence], None],
    ) -> None:
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.new_seq_id = new_seq_id
        self.release = release
        self._touched: dict[str, Request] = {}  # scoring requests with rows in this step

    def new_request(
        self,
        request_id: str,
        processed: ProcessedInput,
        continuations: list[list[int]],
        top_logprobs: int = 0,
    ) -> Request:
        """Check the continuations, build the request and queue its head."""
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise InputError(
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs}",
                "top_logprobs",
            )
        if not isinstance(continuations, list) or not continuations:
            raise InputError("give at least one continuation to score", "continuations")
        if len(continuations) > MAX_CONTINUATIONS:
            raise InputError(
                f"{len(continuations)} continuations; at most {MAX_CONTINUATIONS} per request",
                "continuations",
            )
        for i, tokens in enumerate(continuations):
            if (
                not isinstance(tokens, list)
                or not tokens
                or not all(
                    isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab_size
                    for t in tokens
                )
            ):
                raise InputError(
                    f"continuations[{i}] must be a non-empty list of token ids in "
                    f"[0, {self.vocab_size})",
                    f"continuations[{i}]",
                )
        prompt_len = len(processed.token_ids)
        longest = prompt_len + max(len(c) for c in continuations) - 1
        if longest > self.max_model_len:
            raise InputError(
                f"the prompt ({prompt_len} tokens) and the longest continuation need {longest} "
                f"tokens; the context is {self.max_model_len}",
                "continuations",
            )
        blocks = self.scheduler.block_manager
        max_blocks = blocks.num_blocks - 1
        if -(-longest // blocks.block_size) > max_blocks:
            raise InputError(
                f"the prompt and the longest continuation need more KV-cache blocks than the "
                f"cache has ({max_blocks})",
                "continuations",
            )
        common = _common_prefix(continuations)
        state = ScoringState(
            [list(c) for c in continuations],
            common,
            prompt_len,
            [self.tokenizer.decode(c, skip_special_tokens=False) for c in continuations],
            [[None] * len(c) for c in continuations],
            top_logprobs,
            [[{} for _ in c] for c in continuations],
        )
        request = Request(
            request_id,
            processed.prompt,
            processed.token_ids,
            processed.mm_items,
            processed.mrope_positions,
            processed.mrope_delta,
            SamplingParams(temperature=0.0, max_tokens=max(len(c) for c in continuations)),
            max(len(c) for c in continuations),
            cache_salt=processed.cache_salt,
            scoring=state,
        )
        # The head ends with C: its last len(C) + 1 positions are scored.
        state.head = self._sequence(request, 0, state.continuations[0][:common], prompt_len - 1)
        self.scheduler.add(state.head)
        return request

    def _sequence(
        self, request: Request, index: int, tail: list[int], logits_from: int
    ) -> Sequence:
        seq = Sequence(
            self.new_seq_id(),
            request,
            index,
            [*request.prompt_token_ids, *tail],
            IncrementalDetokenizer(self.tokenizer, [], False, False),
            logits_from=logits_from,
        )
        request.sequences.append(seq)
        return seq

    def take(
        self, sequences: list[Sequence], chunks: list[SeqChunk], logits: torch.Tensor
    ) -> torch.Tensor:
        """Record the step's scored rows; returns the rows left for sampling, in order."""
        if all(chunk.logits_from is None for chunk in chunks):
            return logits
        keep: list[int] = []
        rows: list[int] = []  # one per (row, target) pair, with the targets below
        tokens: list[int] = []
        dests: list[tuple[ScoringState, int, int]] = []
        row = 0
        for seq, chunk in zip(sequences, chunks):
            if chunk.logits_from is None:
                if chunk.needs_logits:
                    keep.append(row)
                    row += 1
                continue
            state = seq.request.scoring
            assert state is not None
            self._touched[seq.request.request_id] = seq.request
            end = chunk.start + len(chunk.token_ids)
            for position in range(max(chunk.start, chunk.logits_from), end):
                for k, j in state.targets(seq, position):
                    rows.append(row)
                    tokens.append(state.continuations[k][j])
                    dests.append((state, k, j))
                row += 1
        if rows:
            logprobs = torch.log_softmax(logits[rows].float(), dim=-1)
            index = torch.tensor(tokens, device=logprobs.device).unsqueeze(1)
            values = logprobs.gather(1, index)
            ranks = (logprobs > values).sum(dim=1) + 1
            for (state, k, j), value, rank, token in zip(
                dests, values.squeeze(1).tolist(), ranks.tolist(), tokens
            ):
                state.logprobs[k][j] = Logprob(value, rank, self.tokenizer.id_to_token(token))
            self._record_top(logprobs, dests)
        return logits[keep]

    def _record_top(
        self, logprobs: torch.Tensor, dests: list[tuple[ScoringState, int, int]]
    ) -> None:
        """The most likely tokens of each scored row, for the states that asked for them."""
        top = max(state.top_logprobs for state, _, _ in dests)
        if top == 0:
            return
        values, ids = logprobs.topk(top, dim=-1)
        for (state, k, j), row_values, row_ids in zip(dests, values.tolist(), ids.tolist()):
            state.alternatives[k][j] = {
                token: Logprob(value, rank, self.tokenizer.id_to_token(token))
                for rank, (token, value) in enumerate(
                    zip(row_ids[: state.top_logprobs], row_values), start=1
                )
            }

    def advance(self) -> dict[str, Request]:
        """After a step: finish the fully computed sequences, start the branches of a
        computed head; returns the scoring requests that are now complete."""
        done: dict[str, Request] = {}
        touched, self._touched = self._touched, {}
        for request_id, request in touched.items():
            state = request.scoring
            assert state is not None
            for seq in list(request.sequences):
                if not seq.is_finished and seq.num_computed_tokens == seq.num_tokens:
                    seq.finish_reason = FinishReason.STOP
                    self.release(seq)  # its full blocks stay in the prefix cache
                    if seq is state.head:
                        self._branch(request, state)
            if request.finished:
                done[request_id] = request
        return done

    def _branch(self, request: Request, state: ScoringState) -> None:
        branches = []
        for k, tokens in enumerate(state.continuations):
            if len(tokens) > state.common + 1:
                seq = self._sequence(request, k, tokens[:-1], state.prompt_len + state.common)
                state.branches[seq.seq_id] = k
                branches.append(seq)
        for seq in reversed(branches):  # at the front, in continuation order
            self.scheduler.add(seq, front=True)


def score_output(request: Request, finished: bool) -> RequestOutput:
    """The request's output: one completion per continuation, complete once it is scored."""
    state = request.scoring
    assert state is not None
    reasons = {seq.seq_id: seq.finish_reason for seq in request.sequences}
    by_branch = {k: seq_id for seq_id, k in state.branches.items()}
    head_reason = state.head.finish_reason if state.head is not None else None
    outputs = []
    for k, tokens in enumerate(state.continuations):
        reason = reasons[by_branch[k]] if k in by_branch else head_reason
        complete = reason is FinishReason.STOP
        entries = state.logprobs[k]
        outputs.append(
            CompletionOutput(
                index=k,
                text=state.texts[k],
                token_ids=list(tokens),
                cumulative_logprob=(
                    sum(e.logprob for e in entries if e is not None) if complete else None
                ),
                logprobs=(
                    [
                        {t: e, **{a: v for a, v in top.items() if a != t}}
                        for t, e, top in zip(tokens, entries, state.alternatives[k])
                        if e is not None
                    ]
                    if complete
                    else None
                ),
                finish_reason=str(reason) if reason is not None else None,
            )
        )
    return RequestOutput(
        request_id=request.request_id,
        prompt=request.prompt,
        prompt_token_ids=request.prompt_token_ids,
        outputs=outputs,
        finished=finished,
        metrics=request.metrics,
        error=request.error,
    )
