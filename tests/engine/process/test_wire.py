"""What crosses the pipe: per-step deltas rebuild the cumulative outputs exactly (also when
text already sent is taken back), each rebuilt output is a snapshot, and errors keep their
kind and field."""

from __future__ import annotations

import pickle

import torch

from vlmserve.engine.errors import EngineOverloaded
from vlmserve.engine.inputs import InputError, ProcessedInput
from vlmserve.engine.process.wire import DeltaEncoder, ErrorInfo, OutputAccumulator, PackedInput
from vlmserve.types import CompletionOutput, Logprob, RequestMetrics, RequestOutput


def output(texts: list[str], tokens: list[list[int]], finished: bool = False) -> RequestOutput:
    return RequestOutput(
        request_id="r",
        prompt="p",
        prompt_token_ids=[1, 2],
        outputs=[
            CompletionOutput(
                index=i,
                text=text,
                token_ids=ids,
                cumulative_logprob=-1.0 * len(ids),
                logprobs=[{t: Logprob(-1.0)} for t in ids],
                finish_reason="stop" if finished else None,
            )
            for i, (text, ids) in enumerate(zip(texts, tokens))
        ],
        finished=finished,
        metrics=RequestMetrics(1.0),
        num_media_tokens={"image": 4},
    )


def test_deltas_rebuild_every_output_exactly() -> None:
    steps = [
        output(["he", "a"], [[5], [6]]),
        output(["hello", "a"], [[5, 7], [6, 8]]),
        output(["hel", "ab"], [[5, 7, 9], [6, 8, 3]]),  # text taken back (a stop string)
        output(["help!", "abc"], [[5, 7, 9, 4], [6, 8, 3, 2]], finished=True),
    ]
    encoder, accumulator = DeltaEncoder(), OutputAccumulator("r")
    seen = []
    for step in steps:
        delta = pickle.loads(pickle.dumps(encoder.encode(step)))
        accumulator.apply(delta)
        seen.append(accumulator.output())
    assert seen == steps
    assert seen[0].outputs[0].token_ids == [5]  # a snapshot: later deltas left it alone
    # Only what changed travelled: the last delta holds one new token per sample.
    last = encoder.encode(output(["x"], [[1]]))
    assert last.prompt_token_ids == [1, 2]  # a new request (the finished one was forgotten)


def test_later_deltas_carry_no_prompt() -> None:
    encoder = DeltaEncoder()
    encoder.encode(output(["a"], [[1]]))
    second = encoder.encode(output(["ab"], [[1, 2]]))
    assert second.prompt_token_ids is None and second.metrics is None
    assert second.completions[0].token_ids == [2] and second.completions[0].text == "b"


def test_errors_keep_their_kind_and_field() -> None:
    cases: list[Exception] = [
        InputError("too long", "max_tokens", 413),
        EngineOverloaded("busy"),
        ValueError("bad"),
        FileNotFoundError("no weights in /m"),
        KeyError("boom"),
    ]
    rebuilt = [pickle.loads(pickle.dumps(ErrorInfo.of(exc))).error() for exc in cases]
    first = rebuilt[0]
    assert isinstance(first, InputError) and (first.param, first.status) == ("max_tokens", 413)
    assert isinstance(rebuilt[1], EngineOverloaded) and str(rebuilt[1]) == "busy"
    assert type(rebuilt[2]) is ValueError
    assert isinstance(rebuilt[3], OSError) and str(rebuilt[3]) == "no weights in /m"
    assert isinstance(rebuilt[4], RuntimeError) and "KeyError" in str(rebuilt[4])


def test_packed_inputs_carry_positions_by_value() -> None:
    positions = torch.arange(12).reshape(3, 4)
    processed = ProcessedInput("p", [1, 2, 3, 4], [], positions, 2)
    unpacked = pickle.loads(pickle.dumps(PackedInput.pack(processed))).unpack()
    assert torch.equal(unpacked.mrope_positions, positions)
    assert unpacked.token_ids == [1, 2, 3, 4] and unpacked.mrope_delta == 2
