"""What chat and completion streams share: each choice's delta since its last chunk, and the
stream's ending (usage chunk, in-band error, `[DONE]`). The endpoints only shape chunks.

A stream follows one engine request or several (a completion with a list of prompts): a
*snapshot* is the latest output of each, and its choices are numbered prompt-major, as
OpenAI numbers them (prompt i's sample j is choice i * n + j)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from vlmserve.api.errors import error_body
from vlmserve.api.sse import DONE, sse_event
from vlmserve.api.usage import usage
from vlmserve.serving import ServingError
from vlmserve.types import CompletionOutput, RequestOutput

logger = logging.getLogger(__name__)
Choice = TypeVar("Choice")
Snapshot = RequestOutput | Sequence[RequestOutput]
ChunkWriter = Callable[[list[Choice], Snapshot | None], bytes]


def snapshot_choices(snapshot: Snapshot, n: int) -> list[CompletionOutput]:
    """Every choice of the snapshot, its `index` the response's (prompt-major)."""
    if isinstance(snapshot, RequestOutput):
        return snapshot.outputs
    return [
        dataclasses.replace(c, index=i * n + c.index)
        for i, output in enumerate(snapshot)
        for c in output.outputs
    ]


def chunk_writer(
    chunk_type: type[BaseModel], request_id: str, model: str, include_usage: bool
) -> ChunkWriter[Choice]:
    """One SSE event per call: `chunk_type` (a chat chunk or a completion) with these choices,
    and usage when `output` is the final one."""
    created = int(time.time())
    # OpenAI sends "usage": null on every chunk only when the client asked for usage.
    exclude = None if include_usage else {"usage"}

    def write(choices: list[Choice], output: Snapshot | None = None) -> bytes:
        payload = chunk_type(
            id=request_id,
            created=created,
            model=model,
            choices=choices,
            usage=usage(output) if output is not None else None,
        )
        return sse_event(payload, exclude)

    return write


@dataclass
class Delta:
    output: CompletionOutput
    text: str  # text not sent yet
    first_token: int  # index of the first token not sent yet
    first_char: int  # offset in the whole text where `text` starts


class DeltaTracker:
    """Per choice, what was sent. Tokens whose text is held back (a possible stop string, a
    split UTF-8 character) make a chunk only when their logprobs were asked for; a choice that
    finished is never reported again, while its siblings (n > 1) may still run."""

    def __init__(self, n: int, want_logprobs: bool, num_prompts: int = 1) -> None:
        self.n = n
        self.sent_text = [0] * n * num_prompts
        self.sent_tokens = [0] * n * num_prompts
        self.reported = [False] * n * num_prompts
        self.want_logprobs = want_logprobs

    def deltas(self, snapshot: Snapshot) -> list[Delta]:
        out = []
        for c in snapshot_choices(snapshot, self.n):
            i = c.index
            if self.reported[i]:
                continue
            text = c.text[self.sent_text[i] :]
            new_tokens = len(c.token_ids) > self.sent_tokens[i]
            if not text and not c.finished() and not (self.want_logprobs and new_tokens):
                continue
            out.append(Delta(c, text, self.sent_tokens[i], self.sent_text[i]))
            self.reported[i] = c.finished()
            self.sent_text[i] = len(c.text)
            self.sent_tokens[i] = len(c.token_ids)
        return out


async def stream_events(
    outputs: AsyncGenerator[Snapshot, None],
    tracker: DeltaTracker,
    choice: Callable[[Delta], Choice],
    chunk: ChunkWriter[Choice],
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    last: Snapshot | None = None
    try:
        # Closing this stream (client gone) closes the engine's, which aborts the request.
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                last = output
                deltas = tracker.deltas(output)
                if deltas:
                    yield chunk([choice(d) for d in deltas], None)
        if include_usage and last is not None:
            yield chunk([], last)
    except ServingError as exc:
        # The status line is gone already: report in-band, as OpenAI does mid-stream.
        yield sse_event(error_body(exc.status, exc.message, exc.param, exc.code))
        yield DONE
        return
    except Exception as exc:
        # Whatever else failed after the first byte (a bug shaping a chunk, an engine that
        # died oddly): the client still learns it, never a silent close.
        logger.exception("a stream failed after it started")
        message = f"the server failed while streaming: {type(exc).__name__}"
        yield sse_event(error_body(500, message, code="stream_failed"))
        yield DONE
        return
    yield DONE
