"""Fetching over HTTP from loopback servers: pinning, rebinding, redirects and streaming limits.

Servers run on 127.0.0.1. Where the policy must see a *public* address, a stub resolver
answers PUBLIC_IP and FakeInternet routes that address to the loopback server, so the
production policy runs unchanged and only the network is simulated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from vlmserve.config import MediaConfig, MediaFetchTimeout
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.fetch import MediaConnector, TransportFactory, fetch_media

from .fakes import (
    PUBLIC_IP,
    FakeInternet,
    Handler,
    LocalServer,
    Request,
    StubResolver,
    png_bytes,
    redirect,
    send_response,
    static,
)

pytestmark = pytest.mark.asyncio
PNG = png_bytes()


def config_for(server: LocalServer, **overrides: object) -> MediaConfig:
    return MediaConfig(allowed_media_ports=(80, 443, server.port), **overrides)


async def fetch_error(
    url: str,
    config: MediaConfig,
    resolver: StubResolver | None = None,
    transport_factory: TransportFactory | None = None,
) -> MediaError:
    with pytest.raises(MediaError) as info:
        await fetch_media(
            url,
            0,
            config,
            resolver=resolver or StubResolver({}),
            transport_factory=transport_factory,
        )
    return info.value


async def test_fetch_connects_to_the_checked_address_with_the_original_host_header(
    server: LocalServer,
) -> None:
    server.routes["/cat.png"] = static(PNG)
    resolver = StubResolver({"media.test": [["127.0.0.1"]]})
    config = config_for(server, allow_private_media_addresses=True)
    url = f"http://media.test:{server.port}/cat.png?size=small"
    data = await fetch_media(url, 0, config, resolver=resolver)
    assert data == PNG
    assert resolver.calls == ["media.test"]  # the network guard proves no other lookup ran
    assert server.requests[0].headers["host"] == f"media.test:{server.port}"
    assert server.requests[0].path == "/cat.png?size=small"
    assert server.requests[0].headers["accept-encoding"] == "identity"


async def test_reachable_loopback_server_is_still_blocked_by_default(server: LocalServer) -> None:
    server.routes["/cat.png"] = static(PNG)
    for url in (f"http://127.0.0.1:{server.port}/cat.png", f"http://localhost:{server.port}/"):
        resolver = StubResolver({"localhost": [["127.0.0.1", "::1"]]})
        error = await fetch_error(url, config_for(server), resolver)
        assert error.code is MediaErrorCode.BLOCKED_ADDRESS
        assert "loopback" in error.message
    assert server.requests == []  # not a single byte was sent to, or fetched from, it


@pytest_asyncio.fixture
async def internet(server: LocalServer) -> AsyncIterator[FakeInternet]:
    fake = FakeInternet({(PUBLIC_IP, server.port): server.port})
    yield fake
    await fake.close()


async def test_rebinding_dns_cannot_switch_the_connection_to_a_private_address(
    server: LocalServer, internet: FakeInternet
) -> None:
    # First answer public, every later answer loopback: a second lookup would be fatal.
    resolver = StubResolver({"rebind.test": [[PUBLIC_IP], ["127.0.0.1"]]})
    server.routes["/cat.png"] = static(PNG)
    url = f"http://rebind.test:{server.port}/cat.png"
    data = await fetch_media(
        url, 0, config_for(server), resolver=resolver, transport_factory=internet.factory
    )
    assert data == PNG
    assert resolver.calls == ["rebind.test"]  # resolved exactly once
    assert internet.destinations == [(PUBLIC_IP, server.port)]  # the checked address
    assert internet.sent[0].headers["host"] == f"rebind.test:{server.port}"


async def test_each_redirect_hop_resolves_again_and_is_checked_again(
    server: LocalServer, internet: FakeInternet
) -> None:
    resolver = StubResolver({"rebind.test": [[PUBLIC_IP], ["127.0.0.1"]]})
    server.routes["/hop"] = redirect(f"http://rebind.test:{server.port}/cat.png")
    server.routes["/cat.png"] = static(PNG)
    config = config_for(server, media_max_redirects=3)
    error = await fetch_error(
        f"http://rebind.test:{server.port}/hop", config, resolver, internet.factory
    )
    assert error.code is MediaErrorCode.BLOCKED_ADDRESS
    assert "resolves to 127.0.0.1" in error.message
    assert server.paths() == ["/hop"]


async def test_redirects_are_refused_by_default(
    server: LocalServer, internet: FakeInternet
) -> None:
    resolver = StubResolver({"public.test": [[PUBLIC_IP]]})
    server.routes["/r"] = redirect("/cat.png", status=301)
    server.routes["/cat.png"] = static(PNG)
    error = await fetch_error(
        f"http://public.test:{server.port}/r", config_for(server), resolver, internet.factory
    )
    assert error.code is MediaErrorCode.TOO_MANY_REDIRECTS
    assert "HTTP 301" in error.message and "--media-max-redirects 0" in error.message
    assert server.paths() == ["/r"]


@pytest.mark.parametrize(
    ("location", "code", "fragment"),
    [
        ("http://127.0.0.1/secret", MediaErrorCode.BLOCKED_ADDRESS, "loopback"),
        ("http://[::1]/secret", MediaErrorCode.BLOCKED_ADDRESS, "loopback"),
        ("http://0x7f000001/secret", MediaErrorCode.BLOCKED_ADDRESS, "loopback"),
        ("http://internal.test/secret", MediaErrorCode.BLOCKED_ADDRESS, "RFC 1918"),
        ("http://169.254.169.254/latest/meta-data/", MediaErrorCode.BLOCKED_ADDRESS, "metadata"),
        ("file:///etc/passwd", MediaErrorCode.SCHEME_NOT_ALLOWED, "'file'"),
        ("gopher://public.test/", MediaErrorCode.SCHEME_NOT_ALLOWED, "'gopher'"),
        ("http://public.test:6379/", MediaErrorCode.PORT_NOT_ALLOWED, "port 6379"),
    ],
)
async def test_redirect_from_a_public_server_to_a_forbidden_target_is_refused(
    server: LocalServer,
    internet: FakeInternet,
    location: str,
    code: MediaErrorCode,
    fragment: str,
) -> None:
    resolver = StubResolver({"public.test": [[PUBLIC_IP]], "internal.test": [["10.0.0.1"]]})
    server.routes["/r"] = redirect(location)
    config = config_for(server, media_max_redirects=5)
    error = await fetch_error(
        f"http://public.test:{server.port}/r", config, resolver, internet.factory
    )
    assert error.code is code
    assert fragment in error.message
    assert server.paths() == ["/r"]
    assert len(internet.sent) == 1  # the forbidden hop was never sent anywhere


@pytest.mark.parametrize("redirects", [0, 3])
@pytest.mark.parametrize(
    "location",
    [
        "data:image/png;base64,iVBORw0KGgo=",  # httpx parses Location even with redirects off
        "data:" + "A" * 70_000,
        "http://[::1/x",
    ],
)
async def test_an_unparsable_redirect_location_is_refused_not_500(
    server: LocalServer, internet: FakeInternet, location: str, redirects: int
) -> None:
    resolver = StubResolver({"public.test": [[PUBLIC_IP]]})
    server.routes["/r"] = redirect(location)
    config = config_for(server, media_max_redirects=redirects)
    error = await fetch_error(
        f"http://public.test:{server.port}/r", config, resolver, internet.factory
    )
    assert error.code in (MediaErrorCode.INVALID_URL, MediaErrorCode.FETCH_FAILED)
    assert server.paths() == ["/r"]


@pytest.mark.parametrize("path", ["/\ud800.png", "/" + "a" * 200_000])
async def test_a_url_httpx_cannot_encode_is_invalid_not_500(
    server: LocalServer, internet: FakeInternet, path: str
) -> None:
    resolver = StubResolver({"public.test": [[PUBLIC_IP]]})
    error = await fetch_error(
        f"http://public.test:{server.port}{path}", config_for(server), resolver, internet.factory
    )
    assert error.code is MediaErrorCode.INVALID_URL
    assert server.paths() == []


async def test_allowed_redirects_are_followed_with_a_hop_limit(
    server: LocalServer, internet: FakeInternet
) -> None:
    resolver = StubResolver({"public.test": [[PUBLIC_IP]]})
    server.routes["/r"] = redirect("/cat.png", status=307)
    server.routes["/cat.png"] = static(PNG)
    server.routes["/loop"] = redirect("/loop")
    config = config_for(server, media_max_redirects=2)
    base = f"http://public.test:{server.port}"
    data = await fetch_media(
        f"{base}/r", 0, config, resolver=resolver, transport_factory=internet.factory
    )
    assert data == PNG
    assert server.paths() == ["/r", "/cat.png"]
    error = await fetch_error(f"{base}/loop", config, resolver, internet.factory)
    assert error.code is MediaErrorCode.TOO_MANY_REDIRECTS
    assert "more than --media-max-redirects 2" in error.message
    assert server.paths().count("/loop") == 3


def drip(delay: float, total_bytes: int) -> Handler:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {total_bytes}"
        writer.write((head + "\r\n\r\n").encode())
        for _ in range(total_bytes):  # bounded: ends by itself even if nobody hangs up
            await asyncio.sleep(delay)
            writer.write(b"\0")
            await writer.drain()

    return handler


async def test_slow_drip_body_hits_the_total_deadline(server: LocalServer) -> None:
    # One byte per 50 ms never trips the read timeout; the wall-clock deadline still ends it.
    server.routes["/drip"] = drip(0.05, 200)
    timeout = MediaFetchTimeout(connect=1.0, read=1.0, total=0.5)
    config = config_for(server, allow_private_media_addresses=True, media_fetch_timeout=timeout)
    started = time.monotonic()
    error = await fetch_error(f"http://127.0.0.1:{server.port}/drip", config)
    elapsed = time.monotonic() - started
    assert error.code is MediaErrorCode.TIMEOUT
    assert "total timeout of 0.5s" in error.message
    assert 0.45 <= elapsed < 1.5


async def test_silent_server_hits_the_read_timeout(server: LocalServer) -> None:
    server.routes["/stall"] = drip(10.0, 100)
    timeout = MediaFetchTimeout(connect=1.0, read=0.2, total=5.0)
    config = config_for(server, allow_private_media_addresses=True, media_fetch_timeout=timeout)
    started = time.monotonic()
    error = await fetch_error(f"http://127.0.0.1:{server.port}/stall", config)
    assert error.code is MediaErrorCode.TIMEOUT
    assert "waiting for data" in error.message
    assert time.monotonic() - started < 2.0


class CountingTransport(httpx.AsyncBaseTransport):
    """A real transport that counts the body bytes the client actually consumed."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(retries=0)
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountingStream(response.stream, self),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, owner: CountingTransport) -> None:
        self.inner, self.owner = inner, owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.owner.received += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def endless(request: Request, writer: asyncio.StreamWriter) -> None:
    # No Content-Length: the body "ends" when the connection closes, i.e. never.
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
    for _ in range(100_000):  # bounded (1.6 GB) in case the client never hangs up
        writer.write(PNG[:8] + b"\0" * 16_376)
        await writer.drain()


async def test_endless_body_stops_one_chunk_past_the_item_limit(server: LocalServer) -> None:
    server.routes["/endless"] = endless
    limit = 200_000
    transport = CountingTransport()
    config = config_for(server, allow_private_media_addresses=True, max_bytes_per_item=limit)
    started = time.monotonic()
    error = await fetch_error(
        f"http://127.0.0.1:{server.port}/endless", config, transport_factory=lambda: transport
    )
    assert error.code is MediaErrorCode.TOO_LARGE and error.status == 413
    assert "max_bytes_per_item" in error.message
    assert limit < transport.received <= limit + 65_536  # httpcore reads 64 KiB at most
    assert time.monotonic() - started < 2.0


async def test_declared_oversize_body_is_refused_before_reading(server: LocalServer) -> None:
    server.routes["/big"] = static(PNG, **{"Content-Length": "999999999"})
    transport = CountingTransport()
    config = config_for(server, allow_private_media_addresses=True)
    error = await fetch_error(
        f"http://127.0.0.1:{server.port}/big", config, transport_factory=lambda: transport
    )
    assert error.code is MediaErrorCode.TOO_LARGE
    assert transport.received == 0


@pytest.mark.parametrize(
    ("content_type", "body", "headers", "code", "fragment"),
    [
        ("text/html", b"<html>", {}, MediaErrorCode.UNSUPPORTED_CONTENT_TYPE, "'text/html'"),
        ("video/mp4", PNG, {}, MediaErrorCode.UNSUPPORTED_CONTENT_TYPE, "expected image/*"),
        ("application/octet-stream", b"<html>", {}, MediaErrorCode.UNSUPPORTED_FORMAT, "PNG"),
        ("image/png", PNG, {"Content-Encoding": "gzip"}, MediaErrorCode.UNSUPPORTED_CONTENT_TYPE,
         "Content-Encoding: gzip"),
    ],
)  # fmt: skip
async def test_wrong_content_is_refused(
    server: LocalServer,
    content_type: str,
    body: bytes,
    headers: dict[str, str],
    code: MediaErrorCode,
    fragment: str,
) -> None:
    server.routes["/x"] = static(body, content_type, **headers)
    config = config_for(server, allow_private_media_addresses=True)
    error = await fetch_error(f"http://127.0.0.1:{server.port}/x", config)
    assert error.code is code
    assert fragment in error.message


async def test_unlabelled_bytes_pass_when_they_sniff_as_an_allowed_image(
    server: LocalServer,
) -> None:
    server.routes["/x"] = static(PNG, "application/octet-stream")
    config = config_for(server, allow_private_media_addresses=True)
    assert await fetch_media(f"http://127.0.0.1:{server.port}/x", 0, config) == PNG


async def test_http_error_status_is_a_fetch_failure(server: LocalServer) -> None:
    config = config_for(server, allow_private_media_addresses=True)
    error = await fetch_error(f"http://127.0.0.1:{server.port}/missing", config)
    assert error.code is MediaErrorCode.FETCH_FAILED
    assert "HTTP 404" in error.message


async def test_connector_caps_concurrent_fetches(server: LocalServer) -> None:
    in_flight = peak = 0

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        await send_response(writer, PNG, headers={"Content-Type": "image/png"})

    server.routes["/slow"] = slow
    config = config_for(server, allow_private_media_addresses=True, max_concurrent_fetches=3)
    connector = MediaConnector(config)
    url = f"http://127.0.0.1:{server.port}/slow"
    results = await asyncio.gather(*(connector.fetch(url, i) for i in range(12)))
    assert results == [PNG] * 12
    assert peak == 3
