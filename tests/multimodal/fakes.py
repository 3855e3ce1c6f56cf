"""Test doubles for the network: a loopback HTTP server, stub resolvers, a fake internet.

NETWORK RULE: tests only ever talk to servers started here on 127.0.0.1. Addresses such as
10.0.0.1 or PUBLIC_IP appear only as resolver answers; `conftest.network_guard` fails any
test whose code tries to open a socket to, or resolve, anything but loopback.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from PIL import Image

from vlmserve.multimodal.addresses import IPAddress

# A globally routable address the policy treats as public. FakeInternet routes it to a
# loopback server; no packet is ever sent to it (the network guard would fail the test).
PUBLIC_IP = "93.184.215.14"


def png_bytes(size: tuple[int, int] = (4, 3), color: tuple[int, ...] = (10, 20, 30)) -> bytes:
    mode = "RGBA" if len(color) == 4 else "RGB"
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


async def send_response(
    writer: asyncio.StreamWriter,
    body: bytes = b"",
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    head = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in head.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


def static(body: bytes, content_type: str = "image/png", **headers: str) -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        await send_response(writer, body, headers={"Content-Type": content_type, **headers})

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        await send_response(writer, status=status, headers={"Location": location})

    return handler


@dataclass
class LocalServer:
    """HTTP/1.1 server on 127.0.0.1 (random port) answering from `routes` by path.
    Handlers must end on their own (bounded loops); `stop` cancels any still running."""

    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            first, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = first.split(" ", 2)
            headers = {}
            for line in lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            request = Request(method, path, headers)
            self.requests.append(request)
            handler = self.routes.get(path.split("?")[0])
            if handler is None:
                await send_response(writer, b"not found", status=404)
            else:
                await handler(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client hung up: exactly what limit tests provoke
        except asyncio.CancelledError:
            pass  # `stop` ended a handler; asyncio would log a cancelled handler as an error
        finally:
            writer.close()
            self._tasks.discard(task)


class StubResolver:
    """Resolver answering from a table; records every lookup. Each value is a list of
    answers, one per successive lookup (the last repeats): [[public], [private]] models a
    rebinding DNS server."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        answers = self.table.get(host)
        if answers is None:
            raise OSError(f"stub resolver: unknown host {host!r}")
        answer = answers[min(self.calls.count(host), len(answers)) - 1]
        return [ipaddress.ip_address(a) for a in answer]


async def resolver_must_not_be_called(host: str, port: int) -> list[IPAddress]:
    raise AssertionError(f"DNS lookup of {host!r} where none may happen")


def transport_must_not_be_built() -> httpx.AsyncBaseTransport:
    raise AssertionError("a connection was about to be opened for a blocked URL")


class FakeInternet(httpx.AsyncBaseTransport):
    """Routes requests for (ip, port) to loopback ports, like the internet routes public
    addresses to servers; any other destination fails the test. Records what was sent."""

    def __init__(self, routes: dict[tuple[str, int], int]) -> None:
        self.routes = routes
        self.sent: list[httpx.Request] = []
        self.destinations: list[tuple[str, int]] = []  # as asked for, before routing
        self._inner = httpx.AsyncHTTPTransport(retries=0)

    def __reduce__(self) -> tuple[type[FakeInternet], tuple[dict[tuple[str, int], int]]]:
        # Travels to another process (a Ray ingress fetches media there) as its routes: the
        # copy routes the same way, and what it records stays in that process.
        return FakeInternet, (self.routes,)

    def factory(self) -> httpx.AsyncBaseTransport:
        return self

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        destination = (request.url.host, request.url.port or 80)
        self.destinations.append(destination)
        if destination not in self.routes:
            raise AssertionError(f"request to unrouted destination {destination}")
        request.url = request.url.copy_with(host="127.0.0.1", port=self.routes[destination])
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass  # shared across fetches of one test; closed by `close`

    async def close(self) -> None:
        await self._inner.aclose()
