"""Appending a sampled token to a sequence and deciding whether the sequence is done."""

from __future__ import annotations

from tokenizers import Tokenizer

from vlmserve.engine.sequence import Sequence
from vlmserve.runner.sampler import SamplerOutput
from vlmserve.types import FinishReason, Logprob


def _logprob_entry(
    out: SamplerOutput, row: int, token: int, logprob: float, rank: int, tokenizer: Tokenizer
) -> dict[int, Logprob]:
    entry = {token: Logprob(logprob, rank, tokenizer.id_to_token(token))}
    for rank, (tid, lp) in enumerate(zip(out.top_ids[row], out.top_logprobs[row]), start=1):
        if tid not in entry:
            entry[tid] = Logprob(lp, rank, tokenizer.id_to_token(tid))
    return entry


def append_token(
    seq: Sequence,
    out: SamplerOutput,
    row: int,
    token: int,
    tokenizer: Tokenizer,
    eos_ids: frozenset[int],
) -> None:
    """Append `token` for sampler row `row`: the sampled token, or the one a grammar steered
    to (whose logprob is then looked up, so reported logprobs match the emitted tokens)."""
    seq.token_ids.append(token)
    if seq.params.logprobs is not None:
        if token == out.token_ids[row]:
            logprob, rank = out.logprobs[row], out.ranks[row]
        else:
            logprob, rank = out.logprob_of(row, token)
        seq.cumulative_logprob += logprob
        seq.output_logprobs.append(_logprob_entry(out, row, token, logprob, rank, tokenizer))
    check_stop(seq, token, eos_ids)


def check_stop(seq: Sequence, token: int, eos_ids: frozenset[int]) -> None:
    """Finish `seq` if `token` (just appended) ends it. min_tokens is enforced by the sampler,
    which blocks the stop tokens until it is reached."""
    p = seq.params
    stop_str = seq.detokenizer.add(token)
    if stop_str is not None:
        seq.finish_reason, seq.stop_reason = FinishReason.STOP, stop_str
    elif token in eos_ids and not p.ignore_eos:
        seq.finish_reason = FinishReason.STOP
    elif token in p.stop_token_ids:
        seq.finish_reason, seq.stop_reason = FinishReason.STOP, token
    elif seq.num_output_tokens >= seq.request.max_output_tokens:
        seq.finish_reason = FinishReason.LENGTH
    if seq.finish_reason is not None:
        seq.detokenizer.flush()
