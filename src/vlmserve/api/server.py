"""`vlmserve serve`: the process owner. Sets process-wide settings, opens the registry file,
binds the port, starts serving HTTP, and only then loads the start-up model (so a port in
use or a damaged registry is found in a second, and /health answers while the model loads);
closes the registry (drain, then close every engine) on the way out.

    open the registry (a damaged file stops here)  ->  bind HOST:PORT (in use: stops here)
    ->  uvicorn serves: /health 200, /ready 503 "model 'x' is loading"
    ->  the registry loads the command line's model (pinned) and every pinned registration,
        each warmed up with one generated token
    ->  /ready 200  ->  SIGTERM: drained (api/shutdown.py), registry closed, exit 0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable, Sequence

import uvicorn
from fastapi import APIRouter, FastAPI

from vlmserve.api.app import create_app
from vlmserve.api.http_protocol import http_protocol
from vlmserve.api.server_config import ServerConfig
from vlmserve.api.shutdown import DrainingServer, Shutdown
from vlmserve.api.startup_log import log_model_summary, log_server_summary
from vlmserve.config import EngineConfig, MediaConfig
from vlmserve.engine.heap import freeze_long_lived
from vlmserve.engine.loading import set_cpu_threads
from vlmserve.registry import (
    LocalEngineHost,
    ModelRegistry,
    ModelSpec,
    ProcessEngineHost,
    RegistryStore,
)

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.db"
BACKLOG = 2048  # uvicorn's default
# Requests were drained before uvicorn stopped (or cut at --shutdown-timeout); what is left
# for closing the registry is a safety margin.
CLOSE_DRAIN_S = 5.0


def run_server(
    engine_config: EngineConfig,
    config: ServerConfig,
    media_config: MediaConfig,
    extra_routers: Sequence[APIRouter] = (),
    process_setup: Callable[[], None] | None = None,
) -> None:
    """`process_setup`: what every engine process runs first (`--engine-process`), e.g. the
    CLI's logging configuration; it must pickle."""
    if config.cpu_threads is not None:
        set_cpu_threads(config.cpu_threads)
    # A SIGINT before signals are taken over (while the registry file opens) ends it here.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(engine_config, config, media_config, extra_routers, process_setup))


def registry_path(config: ServerConfig) -> str:
    return config.registry_path or str(config.state_dir() / REGISTRY_FILE)


def startup_spec(engine_config: EngineConfig, config: ServerConfig) -> ModelSpec:
    """The command line's model as a registration: its name, source and per-model facts
    (the server-wide engine flags are the host's defaults, for every model)."""
    return ModelSpec(
        alias=config.served_model_name or engine_config.model,
        model_name=engine_config.model,
        max_model_len=engine_config.max_model_len,
        chat_template=engine_config.chat_template,
        tokenizer=engine_config.tokenizer,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn, so that a port in use is an error before any load
    (and connections made from now on wait in the backlog rather than being refused)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise _listen_error(exc, f"cannot listen on --host {host}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise _listen_error(exc, f"cannot listen on {host}:{port} (--host, --port)") from None
    return sock


def _listen_error(exc: OSError, what: str) -> OSError:
    error = OSError(f"{what}: {exc.strerror or exc}")  # one line, no "[Errno N]"
    error.errno = exc.errno
    return error


async def serve(
    engine_config: EngineConfig,
    config: ServerConfig,
    media_config: MediaConfig,
    extra_routers: Sequence[APIRouter] = (),
    process_setup: Callable[[], None] | None = None,
) -> None:
    spec = startup_spec(engine_config, config)
    store = await asyncio.to_thread(RegistryStore, registry_path(config))
    host: LocalEngineHost | ProcessEngineHost
    if config.engine_process:
        host = ProcessEngineHost(
            engine_config,
            max_waiting=config.max_waiting,
            on_ready=log_model_summary,
            setup=process_setup,
            cpu_threads=config.cpu_threads,
        )
    else:
        host = LocalEngineHost(
            engine_config,
            max_waiting=config.max_waiting,
            on_ready=log_model_summary,
            freeze_heap=True,
        )
    models = ModelRegistry(host=host, store=store, config=config.registry)
    try:
        sock = bind(config.host, config.port)
        app = create_app(models, config, media_config, extra_routers=extra_routers)
        log_server_summary(config, media_config, sock.getsockname()[1], store.path)
        # Signals are taken before the first model loads: a SIGTERM while it loads drains
        # and exits too (the load is waited for, bounded by the shutdown deadline).
        shutdown = Shutdown(app.state.drain, config.shutdown_timeout)
        server = DrainingServer(uvicorn_config(app, config), shutdown)
        shutdown.install(server)
        # What start-up imported and built lives as long as the process: out of the
        # collector's full walks (engine/heap.py), before the first request.
        freeze_long_lived()
        await models.start([spec])
        watchdog = asyncio.create_task(app.state.watchdog.run())
        try:
            await _serve_until_done(server, sock, models)
        finally:
            watchdog.cancel()
    finally:
        await models.close(min(config.shutdown_timeout, CLOSE_DRAIN_S))
        host.close()
        store.close()


def uvicorn_config(app: FastAPI, config: ServerConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        # uvicorn's loggers go through the process's logging setup (the CLI's --log-level
        # and --log-format), and api/access_log.py writes a richer access line.
        log_config=None,
        access_log=False,
        # httptools with a deadline and a size bound for request heads (uvicorn has neither).
        http=http_protocol(config.header_read_timeout),
        limit_concurrency=config.limit_concurrency,
        timeout_keep_alive=math.ceil(config.timeout_keep_alive),
        # Requests had --shutdown-timeout to finish before uvicorn is told to stop; what
        # still runs then is cancelled after this.
        timeout_graceful_shutdown=1,
    )


async def _serve_until_done(
    server: uvicorn.Server, sock: socket.socket, models: ModelRegistry
) -> None:
    """Serve until uvicorn stops (a signal); if the start-up model cannot load, stop
    serving and raise its error: the process exits with it, as with any start-up error."""
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    startup = asyncio.create_task(models.wait_for_startup())
    await asyncio.wait({serving, startup}, return_when=asyncio.FIRST_COMPLETED)
    error = startup.exception() if startup.done() else None
    if error is not None:
        server.should_exit = True
        await serving
        raise error
    await serving
    startup.cancel()
