"""Engine state -> the caller's `RequestOutput` (vLLM's shape: one CompletionOutput per sample)."""

from __future__ import annotations

from vlmserve.engine.scoring import score_output
from vlmserve.engine.sequence import Request
from vlmserve.types import CompletionOutput, RequestOutput


def make_request_output(request: Request, finished: bool) -> RequestOutput:
    if request.scoring is not None:
        return score_output(request, finished)
    outputs = []
    for seq in request.sequences:
        done = seq.is_finished
        outputs.append(
            CompletionOutput(
                index=seq.index,
                text=seq.detokenizer.stream_safe_text(done),
                token_ids=list(seq.output_token_ids),
                cumulative_logprob=seq.cumulative_logprob
                if seq.params.logprobs is not None
                else None,
                logprobs=list(seq.output_logprobs) if seq.params.logprobs is not None else None,
                finish_reason=str(seq.finish_reason) if seq.finish_reason is not None else None,
                stop_reason=seq.stop_reason,
                num_forced_tokens=seq.num_forced_tokens,
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
        num_media_tokens=media_tokens(request),
    )


def media_tokens(request: Request) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in request.mm_items:
        counts[item.modality] = counts.get(item.modality, 0) + item.length
    return counts
