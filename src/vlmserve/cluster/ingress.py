"""The vlmserve application on Ray Serve: our ingress (the whole OpenAI API, `create_app` as
in the embedded server, over a `ClusterRegistry`) and the reconciler, as two deployments of
one Serve application; model applications are deployed by the reconciler, never here.

The ingress and the reconciler open the registry file, so by default they run on the head
node (`ClusterConfig.ingress_resources`): one disk, one file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.cluster.host import RayEngineHost
from vlmserve.cluster.models import ClusterRegistry
from vlmserve.cluster.reconciler import Reconciler
from vlmserve.cluster.remote import RemotePolicy
from vlmserve.cluster.settings import SHUTDOWN_MARGIN_S, ClusterConfig
from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.heap import freeze_long_lived
from vlmserve.multimodal.fetch import Resolver, TransportFactory, resolve_host
from vlmserve.registry import RegistryStore

APP_NAME = "vlmserve"


@dataclass(frozen=True)
class Options:
    """Everything the vlmserve application is built from (the `serve` flags)."""

    server: ServerConfig  # keys, limits, the registry's lifecycle settings
    media: MediaConfig  # the media policy: every ingress replica fetches under it
    engine_defaults: EngineConfig  # what a registration leaves out
    cluster: ClusterConfig
    registry_path: str
    # The command line's model, stored before Serve starts: listed first in /v1/models.
    command_line: tuple[str, ...] = ()
    # Apps' routes mounted beside the API's (the safety app's /v1/moderations): built in each
    # ingress replica, since routers do not travel between processes but their recipe does.
    extra_routers: Callable[[], Sequence[Any]] = tuple
    # The media connector's DNS and network (tests simulate them; servers keep these).
    media_resolver: Resolver = resolve_host
    media_transport: TransportFactory | None = None


class Ingress:
    # Serve awaits an async constructor (mypy wants __init__ to return None).
    async def __init__(self, reconciler: DeploymentHandle, options: Options) -> None:  # type: ignore[misc]
        self._options = options
        self._reconciler = reconciler
        server, cluster = options.server, options.cluster
        policy = RemotePolicy(
            load_timeout=server.registry.load_timeout,
            request_timeout=cluster.request_timeout,
            overload_status=cluster.overload_status,
            start_timeout=cluster.replica_start_timeout,
        )
        store = await asyncio.to_thread(RegistryStore, options.registry_path)
        self.models = ClusterRegistry(
            host=RayEngineHost(self._ensure, policy),
            store=store,
            config=server.registry,
            reconcile=self._reconcile,
            refresh_interval=cluster.reconcile_interval,
        )
        self.models.list_first(options.command_line)
        await self.models.start()
        freeze_long_lived()  # the imports and the registry live as long as the ingress

    def __serve_build_asgi_app__(self) -> Any:
        o = self._options
        return create_app(
            self.models,
            o.server,
            o.media,
            o.media_resolver,
            o.media_transport,
            extra_routers=o.extra_routers(),
        )

    async def _ensure(self, alias: str) -> str:
        try:
            fingerprint: str = await self._reconciler.ensure.remote(alias)
        except RayTaskError as exc:  # the reconciler's own error, not Ray's wrapping
            raise exc.cause from None
        return fingerprint

    async def _reconcile(self) -> None:
        await self._reconciler.reconcile.remote()

    def check_health(self) -> None:
        """Alive while the registry's loops turn; models never make the ingress unhealthy."""
        problems = self.models.liveness_problems()
        if problems:
            raise RuntimeError("; ".join(problems))

    async def __del__(self) -> None:
        # Serve calls this once the ingress's requests finished (graceful shutdown).
        await self.models.close()
        self.models.store.close()


def application(options: Options) -> Any:
    """The vlmserve Serve application: the ingress (autoscaled), the reconciler (one)."""
    cluster = options.cluster
    placement = {"resources": dict(cluster.ingress_resources)} if cluster.ingress_resources else {}
    reconciler = serve.deployment(
        name="reconciler",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, **placement},
        health_check_period_s=5,
        health_check_timeout_s=30,
    )(Reconciler).bind(options.registry_path, options.engine_defaults, cluster)
    ingress = serve.deployment(
        name="ingress",
        ray_actor_options={"num_cpus": cluster.ingress_num_cpus, **placement},
        max_ongoing_requests=cluster.ingress_max_ongoing_requests,
        autoscaling_config={
            "min_replicas": cluster.ingress_min_replicas,
            "initial_replicas": cluster.ingress_min_replicas,
            "max_replicas": cluster.ingress_max_replicas,
            "target_ongoing_requests": cluster.ingress_max_ongoing_requests / 2,
        },
        graceful_shutdown_timeout_s=cluster.request_timeout + SHUTDOWN_MARGIN_S,
        health_check_period_s=5,
        health_check_timeout_s=30,
    )(serve.ingress()(Ingress))
    return ingress.bind(reconciler, options)
