"""Work bounded before tokenizing: a prompt longer than the context could ever hold is
refused from its length alone, and tokenizing lets other threads run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vlmserve.engine.inputs import MAX_CHARS_PER_TOKEN, InputError
from vlmserve.models.hf_tokenizer import load_tokenizer
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams

CONTEXT = 256


@pytest.fixture(scope="module")
def llm(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl), max_model_len=CONTEXT)


def refused(llm: LLM, prompt: object) -> tuple[InputError, float]:
    start = time.monotonic()
    with pytest.raises(InputError) as caught:
        llm.generate(prompt, SamplingParams(max_tokens=2))  # type: ignore[arg-type]
    return caught.value, time.monotonic() - start


def test_a_huge_prompt_is_refused_before_tokenizing(llm: LLM) -> None:
    # Tokenizing 16 MiB takes a minute on a loaded 2-core machine; the length check, nothing.
    error, seconds = refused(llm, "a" * (16 << 20))
    assert error.param == "prompt" and "characters" in str(error) and seconds < 1.0
    limit = CONTEXT * MAX_CHARS_PER_TOKEN
    error, _ = refused(llm, "word " * (limit // 5 + 1))  # just over: refused untokenized
    assert "characters" in str(error)
    error, _ = refused(llm, "word " * (limit // 5))  # at the bound: tokenized, then too long
    assert "tokens" in str(error) and "characters" not in str(error)


def test_a_huge_token_list_is_refused_before_checking_each_id(llm: LLM) -> None:
    error, seconds = refused(llm, {"prompt_token_ids": [0] * 5_000_000})
    assert error.param == "prompt_token_ids" and "5000000 tokens" in str(error)
    assert seconds < 1.0
    error, _ = refused(llm, {"prompt_token_ids": "abc"})
    assert error.param == "prompt_token_ids"


def test_tokenizing_lets_other_threads_run(tiny_qwen2_vl: Path) -> None:
    """`tokenizers`' plain encode holds the GIL throughout: a long prompt froze the event
    loop and the engine thread. Counted here: a thread waking every millisecond."""
    tokenizer = load_tokenizer(tiny_qwen2_vl)
    text = Path(__file__).read_text() * 200  # ~600k characters: a second or more of work
    ticks = 0
    done = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    start = time.monotonic()
    ids = tokenizer.encode(text)
    seconds = time.monotonic() - start
    done.set()
    ticker.join()
    assert ids == tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
    # Holding the GIL allows a handful of ticks at most; released, hundreds per second.
    assert ticks >= 50 * seconds, (ticks, seconds)
