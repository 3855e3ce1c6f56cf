"""`Reconciler`: Ray's state derived from the registry. The store (the registry's SQLite file)
says which models exist and at which revision; each pass makes Serve's applications match:
a missing one is deployed, one built from something else (another revision, other settings,
another vlmserve) is redeployed, one whose model is gone is deleted, and every other one is
left alone (same fingerprint: no replica restarts).

It runs as a Serve deployment with one replica inside the vlmserve application: a pass every
`reconcile_interval`, and one on demand when the ingress changed the store or loads a model.
So the applications come back by themselves after `serve shutdown` and a restart, a Serve
controller restart, or a re-applied declarative config: the next pass finds them missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from vlmserve.cluster import apps
from vlmserve.cluster.apps import ModelApp
from vlmserve.cluster.settings import ClusterConfig, DeploymentSettings
from vlmserve.config import EngineConfig
from vlmserve.registry import NEVER, ModelSpec, RegistryError, RegistryStore, StoredModel

logger = logging.getLogger("vlmserve.cluster")


def deployment_settings(cluster: ClusterConfig, spec: ModelSpec) -> DeploymentSettings:
    """A model's deployment: the cluster's defaults and the model's own section of the
    config, then what its registration says. `pinned` (or `keep_alive: -1`) keeps a replica
    up; another `keep_alive` is how long an idle model keeps its last replica; `max_waiting`
    bounds its queue."""
    settings = cluster.settings_for(spec.alias)
    if spec.pinned or spec.keep_alive == NEVER:
        floor = max(1, settings.min_replicas)
        ceiling = max(floor, settings.max_replicas)
        settings = dataclasses.replace(settings, min_replicas=floor, max_replicas=ceiling)
    elif spec.keep_alive is not None:
        settings = dataclasses.replace(settings, downscale_to_zero_delay_s=spec.keep_alive)
    if spec.max_waiting is not None:
        settings = dataclasses.replace(settings, max_queued_requests=spec.max_waiting)
    return settings


def desired_apps(
    models: list[StoredModel], defaults: EngineConfig, cluster: ClusterConfig
) -> tuple[dict[str, ModelApp], dict[str, str]]:
    """The application each registered model should have, and why some cannot have one."""
    wanted, problems = {}, {}
    for stored in models:
        spec = stored.spec
        try:
            engine = spec.engine_config(defaults)
            settings = deployment_settings(cluster, spec)
        except (RegistryError, ValueError) as exc:
            problems[spec.alias] = f"cannot be deployed: {exc}"
            continue
        wanted[spec.alias] = ModelApp(spec.alias, engine, settings, stored.revision)
    return wanted, problems


class Reconciler:
    # Serve awaits an async constructor (mypy wants __init__ to return None).
    async def __init__(  # type: ignore[misc]
        self, registry_path: str, engine_defaults: EngineConfig, cluster: ClusterConfig
    ) -> None:
        self._store = await asyncio.to_thread(RegistryStore, registry_path)
        self._defaults = engine_defaults
        self._cluster = cluster
        self._lock = asyncio.Lock()
        self._last_pass = time.monotonic()
        self._reported: dict[str, str] = {}  # problems already logged, by alias
        self._loop = asyncio.get_running_loop().create_task(self._forever())

    async def reconcile(self) -> dict[str, str]:
        """One pass now; the fingerprint of every registered model's application."""
        async with self._lock:
            return await asyncio.to_thread(self._pass)

    async def ensure(self, alias: str) -> str:
        """A pass now; the fingerprint of `alias`'s application, or why it has none."""
        deployed = await self.reconcile()
        if alias in deployed:
            return deployed[alias]
        problem = self._reported.get(alias, "it is not registered")
        raise LookupError(f"model {alias!r}: {problem}")

    def check_health(self) -> None:
        if self._loop.done():
            raise RuntimeError("the reconcile loop stopped")

    async def _forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                logger.exception("a reconcile pass failed; the next one retries")
            await asyncio.sleep(self._cluster.reconcile_interval)

    def _pass(self) -> dict[str, str]:
        wanted, problems = desired_apps(self._store.models(), self._defaults, self._cluster)
        ours = apps.deployed()
        others = apps.names() - set(ours)
        stale = []
        for alias, app in wanted.items():
            if alias in others:
                problems[alias] = "a Serve application of that name exists and is not ours"
            elif alias not in ours or ours[alias].fingerprint != app.fingerprint:
                stale.append(app)
        for alias in problems:
            wanted.pop(alias, None)
        if stale:
            apps.deploy(stale)
            for app in stale:
                change = "updated" if app.alias in ours else "created"
                logger.info("model %r: application %s (%s)", app.alias, change, app.fingerprint)
        for alias in set(ours) - set(wanted) - set(problems):
            apps.delete(alias)
            logger.info("model %r: application deleted (no longer registered)", alias)
        for alias, problem in problems.items():
            if self._reported.get(alias) != problem:
                logger.error("model %r %s", alias, problem)
        self._reported = problems
        self._last_pass = time.monotonic()
        return {alias: app.fingerprint for alias, app in wanted.items()}

    def __del__(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
