"""Random weights write garbage freely: 200 seeded requests per tool choice on the tiny
Qwen2-VL (and `auto` on the tiny Qwen2.5-VL), engine-level offline batches through the real
prompt path (the built-in tool template), budgets small enough to cut calls. Every call
parses, names an offered function and validates; text outside calls never holds a call tag;
`none` never writes one.

The model is the tiny checkpoint with five rows of its output layer changed so that after
"." it tends to write `<tool_call>` (a bigram chain through the tokens of the tag): without
that a random model would almost never open a call in `auto` mode, and that path would go
untested. (The tiny tokenizers spell `<tool_call>` with ordinary tokens; a real Qwen2.5-VL
tokenizer's single added token is the limitation docs/api.md describes.)
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from vlmserve.multimodal.prompt import build_chat_prompt
from vlmserve.offline import LLM
from vlmserve.serving.tool_calls import finish_reason, parse_output
from vlmserve.serving.tools import Tools
from vlmserve.structured.testing import validate
from vlmserve.types import RequestOutput, SamplingParams, ToolFunction

REQUESTS = 200
FUNCTIONS = (
    ToolFunction(
        "get_weather",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
        },
        strict=True,
    ),
    ToolFunction(
        "get_time",
        {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    ),
)
DEFINITIONS = [
    {"type": "function", "function": {"name": fn.name, "parameters": fn.parameters}}
    for fn in FUNCTIONS
]
SCHEMAS = {fn.name: fn.parameters for fn in FUNCTIONS}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def tool_prone_copy(tiny: Path, out: Path, after: str = ".", strength: float = 10.0) -> Path:
    shutil.copytree(tiny, out)
    weights = load_file(str(out / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    chain = tokenizer.encode(after).ids[-1:] + tokenizer.encode("<tool_call>\n").ids
    embed = weights["model.embed_tokens.weight"].float()
    head = weights["lm_head.weight"].float()
    norm = weights["model.norm.weight"].float()
    for previous, following in itertools.pairwise(chain):
        # The last hidden state is mostly the current token's embedding (random layers add
        # little), so this row scores `following` high right after `previous`.
        direction = embed[previous] * norm
        head[following] = strength * direction / direction.norm()
    weights["lm_head.weight"] = head.to(weights["lm_head.weight"].dtype)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def llm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLM]:
    """The tool-prone copy of the tiny checkpoint the test names (indirect parameter)."""
    tiny: Path = request.getfixturevalue(request.param)
    path = tool_prone_copy(tiny, tmp_path_factory.mktemp("prone") / "model")
    with LLM(str(path), max_model_len=512, max_num_seqs=REQUESTS) as llm:
        yield llm


def _run(llm: LLM, tools: Tools, budgets: tuple[int, ...]) -> list[RequestOutput]:
    tokenizer = llm.engine.tokenizer
    assert tokenizer.chat_template is not None
    prompt = build_chat_prompt(
        MESSAGES, tokenizer.chat_template, tokenizer.reserved_tokens, tools=DEFINITIONS
    ).text
    llm.generate(prompt, SamplingParams(max_tokens=1))  # the shared prompt, cached once
    params = [
        tools.constrain(
            SamplingParams(temperature=1.0, seed=seed, max_tokens=budgets[seed % len(budgets)])
        )
        for seed in range(REQUESTS)
    ]
    return llm.generate([prompt] * REQUESTS, params)


@pytest.mark.slow
# Every mode on Qwen2-VL; on Qwen2.5-VL (the same tokenizer and grammar, other weights) the
# mode with the most paths — text, a lazily opened call, cuts — to keep the suite's time down.
@pytest.mark.parametrize(
    ("llm", "mode", "function"),
    [
        ("tiny_qwen2_vl", "auto", None),
        ("tiny_qwen2_vl", "required", None),
        ("tiny_qwen2_vl", "required", "get_time"),
        ("tiny_qwen2_5_vl", "auto", None),
    ],
    indirect=["llm"],
)
def test_every_call_parses_and_validates(llm: LLM, mode: str, function: str | None) -> None:
    tools = Tools(DEFINITIONS, FUNCTIONS, mode, function)  # type: ignore[arg-type]
    # The shortest valid output is ~30 tokens: every budget here cuts a call that runs long.
    outputs = _run(llm, tools, (30, 34, 40))
    calls, reasons, text_only = Counter[str](), Counter[str | None](), 0
    for output in outputs:
        choice = output.outputs[0]
        parsed = parse_output(choice.text, tools.names)  # raises unless the format holds
        content = parsed.content or ""
        assert "<tool_call>" not in content and "</tool_call>" not in content, choice.text
        for call in parsed.tool_calls:
            assert function is None or call.name == function
            validate(json.loads(call.arguments), SCHEMAS[call.name])
            calls[call.name] += 1
        text_only += not parsed.tool_calls
        reasons[finish_reason(choice.finish_reason, bool(parsed.tool_calls))] += 1
    if mode == "required":
        assert text_only == 0
    else:  # the model wrote text, and opened calls, and sometimes both
        assert text_only >= 20 and sum(calls.values()) >= 20, (text_only, calls)
    # Most calls were cut by the budget and closed validly; some the model ended itself.
    assert reasons["length"] >= REQUESTS // 4, reasons
    assert mode == "auto" or reasons["tool_calls"] >= 1, reasons


@pytest.mark.slow
@pytest.mark.parametrize("llm", ["tiny_qwen2_vl"], indirect=True)
def test_none_never_writes_a_call_tag(llm: LLM) -> None:
    tools = Tools(DEFINITIONS, FUNCTIONS, "none")
    outputs = _run(llm, tools, (12, 20))
    texts = [o.outputs[0].text for o in outputs]
    assert not any("<tool_call>" in t or "</tool_call>" in t for t in texts)
    assert sum("tool_call" in t for t in texts) >= 20  # it tried
