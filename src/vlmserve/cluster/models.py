"""`ClusterRegistry`: the model registry as the Ray ingress runs it. The same durable
registrations, admin API and per-model lifecycle as the embedded server (registry/), driving
Serve applications through `RayEngineHost` instead of engines in this process; what Ray
changes:

- A request for a model takes it as it is: the ingress keeps its handle for good (the
  replicas are Serve's to scale, down to zero), so no request pays for a new lookup.
- Readiness never depends on a model: a broken model gets its 503s, the ingress stays in.
- Every administrative change is handed to the reconciler before the answer goes out, so
  the model's application exists (or is gone) when the client hears back.
- Several ingress replicas share one store: each takes in the others' changes every
  `reconcile_interval`, and at once for an alias it does not know (read your writes).

Imports no Ray: the reconciler is reached through a callable.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from vlmserve.config import RegistryConfig
from vlmserve.registry import (
    NEVER,
    EngineHost,
    ModelHandle,
    ModelNotFound,
    ModelRegistry,
    ModelSpec,
    ModelStatus,
    RegistryStore,
)

logger = logging.getLogger("vlmserve.cluster")

Reconcile = Callable[[], Awaitable[object]]  # one pass of the reconciler, now


class ClusterRegistry(ModelRegistry):
    def __init__(
        self,
        *,
        host: EngineHost,
        store: RegistryStore,
        config: RegistryConfig,
        reconcile: Reconcile,
        refresh_interval: float,
    ) -> None:
        super().__init__(host=host, store=store, config=config)
        self._reconcile = reconcile
        self._refresh_interval = refresh_interval
        self._refresher: asyncio.Task[None] | None = None

    async def start(self, startup: Iterable[ModelSpec] = ()) -> None:
        await super().start(startup)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while not self.closed:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.refresh()
            except Exception:
                logger.exception("reading the registry failed; trying again")

    @contextlib.asynccontextmanager
    async def acquire(
        self, alias: str, keep_alive: float | None = None
    ) -> AsyncIterator[ModelHandle]:
        try:
            self.status(alias)
        except ModelNotFound:
            await self.refresh()  # registered through another ingress replica a moment ago?
        # The handle is kept for good (`keep_alive` is Serve's downscale, not ours).
        async with super().acquire(alias, NEVER) as handle:
            yield handle

    def problems(self) -> builtins.list[str]:
        return ["the server is shutting down"] if self.closed else []

    # -- administration: the store, then the applications --------------------------------------
    async def register(self, spec: ModelSpec, load: bool = False) -> tuple[ModelStatus, bool]:
        result = await super().register(spec, load)
        await self._apply()
        return result

    async def replace(self, spec: ModelSpec, expected_revision: int) -> ModelStatus:
        status = await super().replace(spec, expected_revision)
        await self._apply()
        return status

    async def remove(self, alias: str) -> None:
        await super().remove(alias)
        await self._apply()

    async def _apply(self) -> None:
        # The store holds the change already: a reconciler that fails now catches up on its
        # next pass, so the change is not refused for it.
        try:
            await self._reconcile()
        except Exception as exc:
            logger.error("the reconciler failed (its next pass retries): %s", exc)

    async def close(self, drain_timeout: float | None = None) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await super().close(drain_timeout)
