"""Chat messages -> prompt text and media references: what a media part carries."""

from __future__ import annotations

import pytest

from vlmserve.multimodal.processor import LOW_DETAIL_MAX_PIXELS
from vlmserve.multimodal.prompt import PromptError, build_chat_prompt


def test_chat_parts_carry_the_detail_budget() -> None:
    def parts(detail: object) -> list[dict[str, object]]:
        return [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "u", "detail": detail}}],
            }
        ]

    template = (
        "{% for m in messages %}{% for p in m.content %}[{{ p.type }}]{% endfor %}{% endfor %}"
    )
    (low,) = build_chat_prompt(parts("low"), template, frozenset()).media
    (high,) = build_chat_prompt(parts("high"), template, frozenset()).media
    assert (low.max_pixels, high.max_pixels) == (LOW_DETAIL_MAX_PIXELS, None)
    with pytest.raises(PromptError) as info:
        build_chat_prompt(parts("medium"), template, frozenset())
    assert info.value.param == "messages[0].content[0].image_url.detail"
