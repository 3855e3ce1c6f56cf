"""The bounded pool for pre-admission CPU work (serving/work_pool.py): work runs on its
threads, a full pool refuses at once with 503 `server_busy`, and a caller that leaves keeps
its place until the work it started has ended (the bound holds for the threads)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from vlmserve.serving import ServingError
from vlmserve.serving.work_pool import WorkPool

WAIT_S = 30  # generous: a loaded 2-core machine


async def test_work_runs_off_the_event_loop() -> None:
    pool = WorkPool(workers=1, max_queued=0)
    try:
        name = await pool.run(lambda: threading.current_thread().name)
        assert name.startswith("vlmserve-work") and name != threading.current_thread().name
        assert pool.in_use == 0
    finally:
        pool.close()


async def test_a_full_pool_refuses_at_once_with_503() -> None:
    pool = WorkPool(workers=1, max_queued=1)
    gate = threading.Event()
    try:
        held = [asyncio.create_task(pool.run(gate.wait, WAIT_S)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as refused:
            await pool.run(lambda: None)
        assert refused.value.status == 503 and refused.value.code == "server_busy"
        assert refused.value.headers["Retry-After"] == "1"
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*held), WAIT_S) == [True, True]
        await _until(lambda: pool.in_use == 0)
        assert await pool.run(lambda: 7) == 7  # room again
    finally:
        gate.set()
        pool.close()


async def test_a_cancelled_caller_holds_its_place_until_its_work_ends() -> None:
    pool = WorkPool(workers=1, max_queued=1)
    gate = threading.Event()
    ran: list[str] = []

    def queued() -> None:
        ran.append("queued")

    try:
        running = asyncio.create_task(pool.run(gate.wait, WAIT_S))
        waiting = asyncio.create_task(pool.run(queued))
        await asyncio.sleep(0.05)
        running.cancel()
        waiting.cancel()
        await asyncio.gather(running, waiting, return_exceptions=True)
        # The queued work never starts and gives its place back; the running one cannot be
        # stopped, so it keeps its place until it ends.
        await _until(lambda: pool.in_use == 1)
        gate.set()
        await _until(lambda: pool.in_use == 0)
        assert ran == []
    finally:
        gate.set()
        pool.close()


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="workers >= 1"):
        WorkPool(workers=0)


async def _until(condition: object) -> None:
    assert callable(condition)
    for _ in range(WAIT_S * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")
