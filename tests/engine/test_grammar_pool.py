"""The grammar pool: compiles run on their own bounded threads, cached constraints and
cached refusals are answered without a slot, and a full pool refuses at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tests.structured.test_compile_limits import wide_object
from vlmserve.engine.guided import GrammarCompilerBusy, GuidedDecoding
from vlmserve.engine.inputs import InputError
from vlmserve.types import SamplingParams, StructuredOutputsParams


@pytest.fixture
def guided(tiny_qwen2_vl: Path) -> Iterator[GuidedDecoding]:
    tokenizer = Tokenizer.from_file(str(tiny_qwen2_vl / "tokenizer.json"))
    eos = [tokenizer.token_to_id("<|im_end|>")]
    yield GuidedDecoding(
        tokenizer,
        tokenizer.get_vocab_size(),
        eos,
        compile_timeout=0.5,
        compile_workers=1,
        max_pending_compiles=2,
    )


def json_params(schema: dict[str, object]) -> SamplingParams:
    return SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))


def test_compiles_run_on_the_pool_and_a_full_pool_refuses_at_once(
    guided: GuidedDecoding,
) -> None:
    hard = [guided.submit_compile(json_params(wide_object(1000, f"h{i}_"))) for i in range(2)]
    with pytest.raises(GrammarCompilerBusy, match="2 grammar compiles"):
        guided.submit_compile(json_params(wide_object(1000, "late_")))
    for future in hard:
        with pytest.raises(InputError, match="deadline") as caught:
            future.result(timeout=60)
        assert caught.value.param == "structured_outputs.json"
    threads = []

    def compile_here(params: SamplingParams) -> object:
        threads.append(threading.current_thread().name)
        return GuidedDecoding.compile(guided, params)

    guided.compile = compile_here  # type: ignore[method-assign]
    assert guided.submit_compile(json_params({"type": "boolean"})).result(timeout=60)
    assert len(threads) == 1 and threads[0].startswith("vlmserve-grammar")


def test_known_answers_take_no_slot(guided: GuidedDecoding) -> None:
    params = json_params({"type": "integer"})
    compiled = guided.submit_compile(params).result(timeout=60)
    refused = json_params({"type": "string", "pattern": "^(?=a)b$"})
    with pytest.raises(InputError):
        guided.submit_compile(refused).result(timeout=60)
    hard = [guided.submit_compile(json_params(wide_object(1000, f"s{i}_"))) for i in range(2)]
    # The pool is full, yet what the cache knows is answered, already done.
    known = guided.submit_compile(params)
    assert known.done() and known.result() is compiled
    failed = guided.submit_compile(refused)
    assert failed.done() and isinstance(failed.exception(), InputError)
    unconstrained = guided.submit_compile(SamplingParams())
    assert unconstrained.done() and unconstrained.result() is None
    for future in hard:
        future.exception(timeout=60)


def test_pool_settings_are_checked(tiny_qwen2_vl: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_qwen2_vl / "tokenizer.json"))
    with pytest.raises(ValueError, match="at least 1 worker"):
        GuidedDecoding(tokenizer, 10, [0], None, compile_workers=0, max_pending_compiles=1)
    with pytest.raises(ValueError, match="pending slots"):
        GuidedDecoding(tokenizer, 10, [0], None, compile_workers=2, max_pending_compiles=1)
