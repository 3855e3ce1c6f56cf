"""The one error type of the structured-output package, shaped for a 400 response."""

from __future__ import annotations


class StructuredOutputError(ValueError):
    """A constraint that cannot be compiled or enforced exactly.

    `param` names the request field (`structured_outputs.json`, ...), `keyword` the schema
    keyword or grammar feature at fault and `path` a JSON pointer into the offending value, so
    the HTTP layer can build an OpenAI-style error body without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        param: str,
        keyword: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.keyword = keyword
        self.path = path
