"""The app factory: a FastAPI app in front of a model registry whose models are ready.

Taking the registry (rather than loading models in a lifespan hook) keeps the app cheap to
build in tests; whoever built the registry closes it. Every route reaches a model through the
registry (`state.serving.model(alias)`), even with one model. Middleware order, outside in:
request id + access log -> catch-all 500 guard -> request counter -> drain gate (503 after
SIGTERM) -> API keys (before the body is read) -> body (size, deadline, disconnect
watch) -> FastAPI.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI
from starlette.routing import Route

import vlmserve
from vlmserve.api import admin, chat, completions, errors, responses_endpoint, routes
from vlmserve.api.access_log import AccessLogMiddleware
from vlmserve.api.body_limit import BodySizeLimitMiddleware
from vlmserve.api.drain import DrainGate, DrainGateMiddleware
from vlmserve.api.errors import CatchAllMiddleware
from vlmserve.api.key_check import KeyCheckMiddleware
from vlmserve.api.metrics import Metrics, RequestCountMiddleware
from vlmserve.api.server_config import ServerConfig
from vlmserve.api.state import ServingState
from vlmserve.api.tenants import Tenants
from vlmserve.config import MediaConfig
from vlmserve.multimodal.fetch import Resolver, TransportFactory, resolve_host
from vlmserve.registry import ModelRegistry
from vlmserve.serving import MediaLoader, MeteredConnector, Serving
from vlmserve.serving.response_store import ResponseStore
from vlmserve.serving.watchdog import EngineWatchdog
from vlmserve.serving.work_pool import WorkPool


def create_app(
    models: ModelRegistry,
    config: ServerConfig | None = None,
    media_config: MediaConfig | None = None,
    media_resolver: Resolver = resolve_host,
    media_transport: TransportFactory | None = None,
    extra_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """`media_resolver` and `media_transport` are the media connector's DNS and network
    (see docs/media.md): tests simulate them; servers keep the defaults. `extra_routers` are
    apps' routes mounted beside the API's (the CLI mounts the safety app's
    /v1/moderations); they reach the models through `get_state(request).serving` too."""
    config = config or ServerConfig()
    media_config = media_config or MediaConfig()
    app = FastAPI(
        title="vlmserve",
        version=vlmserve.__version__,
        description="OpenAI-compatible serving of vision-language models. See docs/api.md.",
    )
    # Read through the registry, never from an engine: metrics must not keep an unloaded
    # engine alive.
    metrics = Metrics(models.engine_stats, models.list)
    models.events.subscribe(metrics.on_model_event)
    connector = MeteredConnector(
        media_config, metrics.observe_media, media_resolver, media_transport
    )
    # Large bodies are parsed and long templates rendered here, off the event loop.
    work = WorkPool()
    serving = Serving(models, MediaLoader(connector), work)
    app.state.vlm = ServingState(serving, config, metrics)
    app.state.tenants = Tenants(config.api_key, config.admin_api_key, config.api_keys_file)
    # Opened on first use: an app that never stores a response creates no file.
    app.state.responses = ResponseStore(config.state_dir())
    app.state.watchdog = EngineWatchdog(models.engine_stats, config.watchdog_seconds)
    app.state.drain = DrainGate()  # started by the server on SIGTERM (api/shutdown.py)
    known: list[Route] = []
    routers = (chat.router, completions.router, responses_endpoint.router, admin.router)
    for router in (*routers, routes.router, *extra_routers):
        app.include_router(router)
        known.extend(r for r in router.routes if isinstance(r, Route))
    errors.install(app)
    # add_middleware wraps the current stack, so the last one added is the outermost.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=config.max_request_body_bytes,
        read_timeout=config.body_read_timeout,
    )
    app.add_middleware(
        KeyCheckMiddleware, tenants=app.state.tenants, admin_api_key=config.admin_api_key
    )
    app.add_middleware(DrainGateMiddleware, gate=app.state.drain)
    app.add_middleware(RequestCountMiddleware, metrics=metrics, routes=known)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(AccessLogMiddleware, log_requests=config.log_requests)
    return app
