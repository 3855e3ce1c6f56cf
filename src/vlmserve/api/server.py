"""`vlmserve serve`: load the engine, start its loop, serve the app with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.api.state import ModelInfo
from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.engine.engine import LLMEngine

logger = logging.getLogger(__name__)


def run_server(
    engine_config: EngineConfig, config: ServerConfig, media_config: MediaConfig
) -> None:
    engine = LLMEngine(engine_config)
    async_engine = AsyncEngine(engine, max_waiting=config.max_waiting)
    model = ModelInfo.from_engine(engine, config.served_model_name)
    app = create_app(async_engine, model, config, media_config)
    logger.info(
        "serving %s as %r on http://%s:%d", model.root, model.name, config.host, config.port
    )
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="info")
    finally:
        async_engine.shutdown()
