"""Loads a model folder's tokenizer: `tokenizer.json` (fast tokenizer) plus the chat template
and special tokens from `tokenizer_config.json` (or `chat_template.jinja` / `.json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenizerBundle:
    tokenizer: Tokenizer
    chat_template: str | None
    # Every added token, `special` or not: the tokenizer matches added tokens anywhere in
    # text, so caller text containing one could forge turns, placeholders or tool calls.
    reserved_tokens: frozenset[str]
    eos_token: str | None

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        # encode_batch releases the GIL while it works (encode holds it: one long prompt
        # froze the event loop and the engine thread for seconds); same ids.
        return list(self.tokenizer.encode_batch([text], add_special_tokens=False)[0].ids)


def load_tokenizer(folder: str | Path) -> TokenizerBundle:
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(f"{path} is not a valid tokenizer file: {exc}") from exc
    config: dict = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
    template = config.get("chat_template")
    for name in ("chat_template.jinja", "chat_template.json"):
        candidate = folder / name
        if template is None and candidate.is_file():
            text = candidate.read_text()
            template = json.loads(text)["chat_template"] if name.endswith(".json") else text
    reserved = frozenset(tok.content for tok in tokenizer.get_added_tokens_decoder().values())
    eos = config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return TokenizerBundle(tokenizer, template, reserved, eos)
