"""What an engine may still hold once every request it accepted has ended: nothing.

`leaks(engine)` lists what it holds anyway: unfinished requests, queued or running
sequences, KV blocks in use, grammar states. The tests check it after every test that used
an engine, so a leak fails the test that caused it rather than wedging a server later.
It reads without locks: against an engine thread that is still busy the answer is a
snapshot, so callers poll until it is empty or a deadline passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlmserve.engine.engine import LLMEngine

_SHOWN = 5  # ids named per finding; the count says how many there are


def leaks(engine: LLMEngine) -> list[str]:
    """One line per kind of state an idle engine should not hold; empty when it is idle."""
    found = []
    requests = list(engine.requests)
    if requests:
        found.append(f"{len(requests)} requests not finished: {requests[:_SHOWN]}")
    scheduler = engine.scheduler
    for name, queue in (("running", list(scheduler.running)), ("waiting", list(scheduler.waiting))):
        if queue:
            owners = [seq.request.request_id for seq in queue[:_SHOWN]]
            found.append(f"{len(queue)} sequences still {name} (of requests {owners})")
    blocks = engine.block_manager
    # Prefix-cached blocks nobody references are free: they sit in the free list.
    in_use = blocks.num_blocks - 1 - blocks.num_free_blocks
    referenced = sum(1 for count in blocks.ref_counts if count)
    if in_use or referenced:
        found.append(f"{max(in_use, referenced)} KV blocks still in use")
    grammars = len(engine.guided.grammars)
    if grammars:
        found.append(f"{grammars} grammar states still held")
    return found
