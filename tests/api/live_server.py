"""An app served by uvicorn over real loopback sockets, with the server's own uvicorn
settings (`uvicorn_config`), on a thread with its own event loop: for what only a real
connection shows (head and body timeouts, connection caps, refusing a body unread)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from vlmserve.api.server import uvicorn_config
from vlmserve.api.server_config import ServerConfig


@contextlib.contextmanager
def live_server(app: FastAPI, config: ServerConfig) -> Iterator[tuple[str, int]]:
    """Yields (host, port) once the server accepts connections; stops it on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    server = uvicorn.Server(uvicorn_config(app, config))
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="live-server"
    )
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            assert thread.is_alive(), "the server did not start"
            threading.Event().wait(0.01)
        yield address
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
