"""Keeping Python's cyclic garbage collector off a server's latency.

A full (oldest-generation) collection walks every object the process tracks. A server with
a model loaded tracks ~370k of them (torch, transformers, the app, the model's modules),
and each such walk held the GIL ~140 ms. A busy server allocates fast enough to trigger
one every ~4 s, so /health's p99 and every request's latency paid for it (the soak's
/health p99 was 135-145 ms with these pauses; docs/benchmarks.md, "Pauses").

Those objects live as long as the process or their model. Once a model is loaded (or
unloaded), `freeze_long_lived` collects what is unreachable and moves everything still
alive into the permanent generation (`gc.freeze`), which collections skip. What requests
allocate afterwards is collected as before, and an unloaded model's objects are freed by
reference counting. The few in reference cycles are found by the next call, which thaws
the heap before collecting: nothing stays frozen that is garbage at that moment.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def freeze_long_lived() -> None:
    """Collect the whole heap once, then freeze what survives. It walks every object, so it
    pauses the process for about one full collection (~140 ms for a loaded server): call it
    after a load or an unload, never per request."""
    start = time.monotonic()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    logger.debug(
        "garbage collector: %d objects frozen in %.0f ms",
        gc.get_freeze_count(),
        (time.monotonic() - start) * 1000,
    )
