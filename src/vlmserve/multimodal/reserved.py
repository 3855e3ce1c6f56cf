"""Reserved tokens in a rendered chat prompt: only the chat template may place them.

The tokenizer turns every occurrence of an added token's text (`<|im_end|>`, `<|image_pad|>`,
`<tool_call>`, ...) into that token, whoever wrote the text. Checking each text part alone
is not enough: the template joins adjacent parts with nothing between them, so the parts
`"A<|im_"` and `"end|>\\n<|im_start|>system..."` render as a real turn boundary. So the check
runs on the rendered prompt: the template is rendered a second time with each text replaced
by a marker, which tells which characters came from which text; every reserved token the
tokenizer will find must lie wholly in the template's own characters.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class TextSlot:
    """One piece of caller text that the template renders: a string content or a text part."""

    param: str  # where it came from, e.g. messages[1].content[0].text
    text: str


class ForgedToken(ValueError):
    """Caller text forms a reserved token in the rendered prompt."""

    def __init__(self, message: str, params: list[str]) -> None:
        super().__init__(message)
        self.params = params


def reserved_pattern(reserved: Collection[str]) -> re.Pattern[str] | None:
    """Matches reserved tokens as the tokenizer finds added tokens: leftmost, longest first."""
    tokens = sorted((t for t in reserved if t), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def check_rendered(
    render: Callable[[Callable[[int], str]], str],
    rendered: str,
    slots: list[TextSlot],
    reserved: Collection[str],
) -> None:
    """Raise ForgedToken if caller text forms a reserved token anywhere in `rendered`.

    `render(text_of)` renders the template with slot `i`'s text replaced by `text_of(i)`;
    `rendered` is `render(lambda i: slots[i].text)`.
    """
    pattern = reserved_pattern(reserved)
    if pattern is None or not slots:
        return
    # Random per call: no template can contain it by chance (caller text never reaches it).
    nonce = secrets.token_hex(8)
    marker = re.compile(rf"\[\[{nonce}:(\d+)\]\]")
    skeleton = render(lambda i: f"[[{nonce}:{i}]]")
    pieces = marker.split(skeleton)  # template text, slot index, template text, ...
    regions: list[tuple[int, int, int]] = []  # (start, end, slot) of caller text
    rebuilt: list[str] = []
    position = 0
    for k, piece in enumerate(pieces):
        text = piece if k % 2 == 0 else slots[int(piece)].text
        if k % 2:
            regions.append((position, position + len(text), int(piece)))
        rebuilt.append(text)
        position += len(text)
    if "".join(rebuilt) != rendered:
        # The template changed the text (trimmed it, say): no map from characters to parts,
        # but any reserved token beyond the template's own still came from caller text.
        extra = Counter(m.group() for m in pattern.finditer(rendered))
        extra.subtract(m.group() for m in pattern.finditer(skeleton))
        forged = sorted(token for token, count in extra.items() if count > 0)
        if forged:
            params = [slot.param for slot in slots if slot.text]
            raise ForgedToken(
                f"the text of the messages forms the reserved token {forged[0]!r} in the "
                "rendered prompt; only the server may place it",
                params,
            )
        return
    for match in pattern.finditer(rendered):
        start, end = match.span()
        involved = [(s, e, slot) for s, e, slot in regions if s < end and start < e]
        if not involved:
            continue
        params = list(dict.fromkeys(slots[slot].param for _, _, slot in involved))
        token = match.group()
        if len(params) > 1:
            what = (
                f"{' and '.join(params)} together form the reserved token {token!r} in the "
                "rendered prompt (the template joins parts without a separator)"
            )
        elif all(s <= start and end <= e for s, e, _ in involved):
            what = f"{params[0]} contains the reserved token {token!r}"
        else:
            what = f"{params[0]} forms the reserved token {token!r} with the template's text"
        raise ForgedToken(f"{what}; only the server may place it", params)
