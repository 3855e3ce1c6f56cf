"""The app factory: a FastAPI app around an engine that is already loaded and running.

Taking a ready engine (rather than loading one in a lifespan hook) keeps the app cheap to
build in tests and means the app never exists without its model. Middleware order, outside
in: catch-all 500 guard -> request counter -> body size limit -> FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.routing import Route

import vlmserve
from vlmserve.api import chat, completions, errors, routes
from vlmserve.api.body_limit import BodySizeLimitMiddleware
from vlmserve.api.errors import CatchAllMiddleware
from vlmserve.api.media import MediaLoader, MeteredConnector
from vlmserve.api.metrics import Metrics, RequestCountMiddleware
from vlmserve.api.server_config import ServerConfig
from vlmserve.api.state import ModelInfo, ServingState
from vlmserve.config import MediaConfig
from vlmserve.multimodal.fetch import Resolver, TransportFactory, resolve_host

if TYPE_CHECKING:
    from vlmserve.engine.async_engine import AsyncEngine


def create_app(
    engine: AsyncEngine,
    model: ModelInfo,
    config: ServerConfig | None = None,
    media_config: MediaConfig | None = None,
    media_resolver: Resolver = resolve_host,
    media_transport: TransportFactory | None = None,
) -> FastAPI:
    """`media_resolver` and `media_transport` are the media connector's DNS and network
    (see docs/media.md): tests simulate them; servers keep the defaults."""
    config = config or ServerConfig()
    media_config = media_config or MediaConfig()
    app = FastAPI(
        title="vlmserve",
        version=vlmserve.__version__,
        description="OpenAI-compatible serving of vision-language models. See docs/api.md.",
    )
    metrics = Metrics(engine.stats)
    media = MediaLoader(MeteredConnector(media_config, metrics, media_resolver, media_transport))
    app.state.vlm = ServingState(engine, model, config, media, metrics)
    known: list[Route] = []
    for router in (chat.router, completions.router, routes.router):
        app.include_router(router)
        known.extend(r for r in router.routes if isinstance(r, Route))
    errors.install(app)
    # add_middleware wraps the current stack, so the last one added is the outermost.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_request_body_bytes)
    app.add_middleware(RequestCountMiddleware, metrics=metrics, routes=known)
    app.add_middleware(CatchAllMiddleware)
    return app
