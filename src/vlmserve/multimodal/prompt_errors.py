"""The chat prompt's one error type (its own module: the prompt and the tool helpers both
raise it)."""

from __future__ import annotations


class PromptError(ValueError):
    """Invalid chat input; `param` names the offending field (e.g. `messages[1].content[0]`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
