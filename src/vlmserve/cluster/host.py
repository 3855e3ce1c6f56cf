"""`RayEngineHost`: the registry's engine host when models run in Serve applications.

The registry runs each model's lifecycle as in the embedded server and asks its host to load
and unload; here:

- **load** = have the reconciler deploy the model's application at the store's current
  revision (it usually is already), then ask a replica for the model's facts (`ModelInfo`:
  chat template, limits, tokenizer for logprobs) — which waits for a replica to start if
  the model is at zero. A model whose application Serve gave up on (its replicas fail to
  start) fails the load at once with Serve's reason, so the registry's back-off applies
  instead of a wait for a replica that never comes.
- **unload** = this ingress stops using the application. The application stays: whether it
  has replicas is Serve's autoscaler's business; whether it exists is the reconciler's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

from vlmserve.cluster import apps
from vlmserve.cluster.remote import RemoteEngine, RemotePolicy
from vlmserve.cluster.replica import ReplicaFacts
from vlmserve.registry import Loaded, ModelHandle, ModelSpec

logger = logging.getLogger("vlmserve.cluster")

STATUS_POLL_S = 2.0

Ensure = Callable[[str], Awaitable[str]]  # alias -> fingerprint of its deployed application


class ApplicationFailed(RuntimeError):
    """Serve could not start the model's replicas."""


class RayEngineHost:
    def __init__(self, ensure: Ensure, policy: RemotePolicy) -> None:
        self.ensure = ensure
        self.policy = policy

    async def load(self, spec: ModelSpec) -> Loaded:
        start = time.monotonic()
        fingerprint = await self.ensure(spec.alias)
        engine = RemoteEngine(spec.alias, self.policy)
        facts = await _first(engine.facts(), _failure(spec.alias, fingerprint))
        if facts.fingerprint != fingerprint:  # redeployed meanwhile: still this model
            logger.info(
                "model %r: answered by %s, not %s", spec.alias, facts.fingerprint, fingerprint
            )
        seconds = time.monotonic() - start
        logger.info(
            "model %r: a replica answers (pid %d, node %s) after %.1f s",
            spec.alias,
            facts.pid,
            facts.node_id[:12],
            seconds,
        )
        # The registration's narrowing of the media policy applies where media is fetched:
        # here, in the ingress (the replica knows only its engine).
        info = dataclasses.replace(facts.info, media_policy=spec.media)
        # Nothing of the model lives in this process: it takes no room here.
        return Loaded(ModelHandle(info, engine), 0, seconds)

    async def unload(self, handle: ModelHandle) -> None:
        handle.engine.close()


async def _failure(alias: str, fingerprint: str) -> NoReturn:
    """Raises once Serve reports the application failed (never returns)."""
    while True:
        deployed = (await asyncio.to_thread(apps.deployed)).get(alias)
        if deployed is not None and deployed.fingerprint == fingerprint and deployed.failed:
            raise ApplicationFailed(f"Serve could not start its replicas: {deployed.message}")
        await asyncio.sleep(STATUS_POLL_S)


async def _first(facts: Awaitable[ReplicaFacts], failure: Awaitable[NoReturn]) -> ReplicaFacts:
    """The facts, or the failure's error if it comes first."""
    answer = asyncio.ensure_future(facts)
    watch = asyncio.ensure_future(failure)
    try:
        await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            await watch  # raises ApplicationFailed
        return answer.result()
    finally:
        for task in (answer, watch):
            task.cancel()
