"""`vlmserve serve`: the process owner. Sets process-wide settings, builds the engine off the
event loop, starts it, puts it in the model registry, serves the app with uvicorn, and
closes the registry (drain, then close every engine) on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import APIRouter

from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.api.startup_log import log_startup_summary
from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import build_engine
from vlmserve.engine.loading import set_cpu_threads
from vlmserve.registry import ModelHandle, ModelInfo, ModelRegistry

logger = logging.getLogger(__name__)

# uvicorn has let open connections finish before this; what is left is a safety margin.
SHUTDOWN_DRAIN_S = 30.0


def run_server(
    engine_config: EngineConfig,
    config: ServerConfig,
    media_config: MediaConfig,
    extra_routers: Sequence[APIRouter] = (),
) -> None:
    if config.cpu_threads is not None:
        set_cpu_threads(config.cpu_threads)
    # uvicorn re-raises the SIGINT it caught once it has shut down: that is the way out.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(engine_config, config, media_config, extra_routers))


async def serve(
    engine_config: EngineConfig,
    config: ServerConfig,
    media_config: MediaConfig,
    extra_routers: Sequence[APIRouter] = (),
) -> None:
    engine = await asyncio.to_thread(build_engine, engine_config)
    async_engine = AsyncEngine(engine, max_waiting=config.max_waiting).start()
    model = ModelInfo.from_engine(engine, config.served_model_name)
    models = ModelRegistry([ModelHandle(model, async_engine)])
    try:
        app = create_app(models, config, media_config, extra_routers=extra_routers)
        # log_config=None: uvicorn's loggers go through the process's logging setup (the
        # CLI's --log-level and format), not a configuration of uvicorn's own.
        server = uvicorn.Server(
            uvicorn.Config(app, host=config.host, port=config.port, log_config=None)
        )
        log_startup_summary(engine, model, config, media_config)
        _take_reraised_sigterm()
        await server.serve()
    finally:
        await models.close(SHUTDOWN_DRAIN_S)


def _take_reraised_sigterm() -> None:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again; with the default
    handler that kills the process (exit 143) before the registry is closed. This handler takes
    that one re-raise and puts the default back, so the process closes the registry and exits
    0, and a later SIGTERM (a close that hangs) still ends it at once. Installed only now: a
    SIGTERM during the model load keeps its default effect."""

    def restore_default(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, restore_default)
