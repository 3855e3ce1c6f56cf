"""The media attack suite through `/v1/chat/completions`: every attack is refused with the
expected status and an OpenAI error body naming the reason and the content part, nothing is
fetched from a blocked address, and the server answers `/health` and a normal chat request
afterwards.

NETWORK RULE (see tests/multimodal/fakes.py): the network guard fails any test that resolves
or connects to anything but loopback. Blocked URLs run with a resolver and a transport that
fail if called, proving the refusal comes before any lookup or connection. Where the policy
must see a public address (redirects, rebinding, slow or endless bodies), a stub resolver
answers PUBLIC_IP and a fake internet routes it to a loopback server.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI

from tests.api.conftest import MAX_IMAGES, assert_error, chat_body, client_for, single_model
from tests.multimodal.fakes import (
    PUBLIC_IP,
    FakeInternet,
    LocalServer,
    StubResolver,
    png_bytes,
    redirect,
    resolver_must_not_be_called,
    static,
    transport_must_not_be_built,
)
from tests.multimodal.fixtures import network_guard, server
from tests.multimodal.test_fetch_http import drip, endless
from tests.multimodal.test_image import png_bomb
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import MediaConfig, MediaFetchTimeout
from vlmserve.engine.async_engine import AsyncEngine
from vlmserve.multimodal.fetch import Resolver, TransportFactory

__all__ = ["network_guard", "png_bomb", "server"]  # fixtures used here

CHAT = "/v1/chat/completions"
PART = "messages[0].content[0]"


def attack_app(
    engine: AsyncEngine,
    media_config: MediaConfig | None = None,
    resolver: Resolver = resolver_must_not_be_called,
    transport: TransportFactory = transport_must_not_be_built,
) -> FastAPI:
    return create_app(single_model(engine), ServerConfig(), media_config, resolver, transport)


def image(url: str | None = None, uuid: str | None = None) -> list[dict[str, Any]]:
    body = {k: v for k, v in (("url", url), ("uuid", uuid)) if v is not None}
    return [{"type": "image_url", "image_url": body}, {"type": "text", "text": "What is it?"}]


async def assert_refused(
    app: FastAPI,
    content: list[dict[str, Any]],
    status: int,
    needle: str,
    code: str | None = None,
    param: str | None = PART,
) -> str:
    """The request is refused as expected, then the server is healthy and still serves."""
    async with client_for(app) as client:
        response = await client.post(CHAT, json=chat_body(content))
        message = assert_error(response, status, param)
        assert needle in message, message
        if param is not None and param.startswith("messages[0].content"):
            assert message.startswith(f"{param}: "), message  # names the item
        if code is not None:
            assert response.json()["error"]["code"] == code
        assert (await client.get("/health")).json() == {"status": "ok"}
        normal = await client.post(CHAT, json=chat_body("Hello"))
        assert normal.status_code == 200, normal.text
    return message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/cat.png", "loopback address"),
        ("http://localhost./cat.png", "loopback address"),
        ("http://10.1.2.3/cat.png", "private address (RFC 1918)"),
        ("http://192.168.0.1/cat.png", "private address (RFC 1918)"),
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata endpoint"),
        ("http://2130706433/cat.png", "loopback address"),  # decimal
        ("http://0x7f.1/cat.png", "loopback address"),  # hex, short form
        ("http://0177.0.0.1/cat.png", "loopback address"),  # octal
        ("http://%31%32%37.0.0.1/cat.png", "loopback address"),  # percent-encoded
        ("http://[::1]/cat.png", "loopback address"),
        ("http://[::ffff:127.0.0.1]/cat.png", "loopback address"),  # IPv4-mapped
        ("http://[::ffff:a9fe:a9fe]/cat.png", "cloud metadata endpoint"),  # mapped, in hex
        ("http://0.0.0.0/cat.png", "unspecified"),
    ],
)
async def test_blocked_addresses_are_refused_before_any_lookup_or_connection(
    async_engine: AsyncEngine, url: str, reason: str
) -> None:
    # Only names go to DNS; "localhost." is answered by the stub, every numeric form never is.
    resolver = StubResolver({"localhost.": [["127.0.0.1"]], "localhost": [["127.0.0.1"]]})
    app = attack_app(async_engine, resolver=resolver)
    await assert_refused(app, image(url), 400, reason, "blocked_address")
    assert resolver.calls in ([], ["localhost."], ["localhost"])


async def test_a_name_resolving_to_a_private_address_is_refused(async_engine: AsyncEngine) -> None:
    resolver = StubResolver({"intranet.example": [[PUBLIC_IP, "10.0.0.7"]]})
    app = attack_app(async_engine, resolver=resolver)
    url = image("http://intranet.example/a.png")
    await assert_refused(app, url, 400, "10.0.0.7", "blocked_address")
    assert resolver.calls == ["intranet.example"]


@pytest_asyncio.fixture
async def internet(server: LocalServer) -> AsyncIterator[FakeInternet]:
    fake = FakeInternet({(PUBLIC_IP, 80): server.port})
    yield fake
    await fake.close()


def public(*hosts: str, answers: list[list[str]] | None = None) -> StubResolver:
    return StubResolver({host: answers or [[PUBLIC_IP]] for host in hosts})


async def test_redirect_to_loopback_is_refused_at_the_hop(
    async_engine: AsyncEngine, server: LocalServer, internet: FakeInternet
) -> None:
    server.routes["/r"] = redirect("http://127.0.0.1/secret")
    server.routes["/secret"] = static(png_bytes())
    config = MediaConfig(media_max_redirects=3)
    app = attack_app(async_engine, config, public("cdn.example"), internet.factory)
    await assert_refused(app, image("http://cdn.example/r"), 400, "loopback", "blocked_address")
    assert server.paths() == ["/r"]  # the secret was never asked for
    assert internet.destinations == [(PUBLIC_IP, 80)]
    # Redirects off (the default): the 3xx itself is the refusal.
    app = attack_app(async_engine, None, public("cdn.example"), internet.factory)
    await assert_refused(app, image("http://cdn.example/r"), 400, "302", "too_many_redirects")


@pytest.mark.parametrize("redirects", [0, 2])
async def test_a_redirect_to_a_data_url_is_a_400_naming_the_part(
    async_engine: AsyncEngine, server: LocalServer, internet: FakeInternet, redirects: int
) -> None:
    # Any public host can answer this; httpx parses the Location even with redirects off.
    server.routes["/r"] = redirect(
        "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    )
    config = MediaConfig(media_max_redirects=redirects)
    app = attack_app(async_engine, config, public("cdn.example"), internet.factory)
    await assert_refused(app, image("http://cdn.example/r"), 400, "redirect", "invalid_url")


async def test_a_200_kb_url_path_is_a_400_naming_the_part(
    async_engine: AsyncEngine, internet: FakeInternet
) -> None:
    app = attack_app(async_engine, None, public("cdn.example"), internet.factory)
    url = "http://cdn.example/" + "a" * 200_000
    await assert_refused(app, image(url), 400, "URL too long", "invalid_url")
    assert internet.destinations == []


async def test_a_nul_in_a_file_url_is_a_400(async_engine: AsyncEngine, tmp_path: Path) -> None:
    app = attack_app(async_engine, MediaConfig(allowed_local_media_path=str(tmp_path)))
    await assert_refused(app, image(f"file://{tmp_path}/x%00.png"), 400, "NUL", "invalid_url")


async def test_a_non_ascii_data_url_is_a_400(async_engine: AsyncEngine) -> None:
    app = attack_app(async_engine)
    url = "data:image/png;base64,iVBORw0KGgoé"
    await assert_refused(app, image(url), 400, "ASCII", "corrupt_data")


async def test_dns_rebinding_cannot_reach_loopback(
    async_engine: AsyncEngine, server: LocalServer, internet: FakeInternet
) -> None:
    # The rebinding server answers public first, loopback afterwards.
    answers = [[PUBLIC_IP], ["127.0.0.1"]]
    server.routes["/cat.png"] = static(png_bytes((56, 56)))
    server.routes["/r"] = redirect("http://rebind.example/cat.png")
    # One hop: the connection is pinned to the address that was checked, so the second
    # answer is never asked for and the image comes from the public address.
    resolver = public("rebind.example", answers=answers)
    app = attack_app(async_engine, None, resolver, internet.factory)
    async with client_for(app) as client:
        ok = await client.post(CHAT, json=chat_body(image("http://rebind.example/cat.png")))
    assert ok.status_code == 200, ok.text
    assert resolver.calls == ["rebind.example"]
    # A redirect back to the same name resolves again, gets loopback, and is refused.
    resolver = public("rebind.example", answers=answers)
    app = attack_app(async_engine, MediaConfig(media_max_redirects=2), resolver, internet.factory)
    await assert_refused(app, image("http://rebind.example/r"), 400, "loopback", "blocked_address")
    assert resolver.calls == ["rebind.example", "rebind.example"]
    assert set(internet.destinations) == {(PUBLIC_IP, 80)}
    assert server.paths() == ["/cat.png", "/r"]


async def test_slow_drip_is_cut_at_the_total_timeout(
    async_engine: AsyncEngine, server: LocalServer, internet: FakeInternet
) -> None:
    server.routes["/drip"] = drip(0.05, 400)  # type: ignore[assignment]
    timeout = MediaFetchTimeout(connect=1.0, read=1.0, total=0.5)
    config = MediaConfig(media_fetch_timeout=timeout)
    app = attack_app(async_engine, config, public("slow.example"), internet.factory)
    await assert_refused(app, image("http://slow.example/drip"), 400, "total timeout", "timeout")


async def test_endless_body_is_a_413_past_the_item_limit(
    async_engine: AsyncEngine, server: LocalServer, internet: FakeInternet
) -> None:
    server.routes["/endless"] = endless
    config = MediaConfig(max_bytes_per_item=200_000)
    app = attack_app(async_engine, config, public("big.example"), internet.factory)
    await assert_refused(
        app, image("http://big.example/endless"), 413, "max_bytes_per_item", "too_large"
    )


async def test_wrong_content_type_is_refused_before_the_body(
    async_engine: AsyncEngine, server: LocalServer, internet: FakeInternet
) -> None:
    server.routes["/page"] = static(b"<html>admin panel</html>", "text/html")
    app = attack_app(async_engine, None, public("www.example"), internet.factory)
    await assert_refused(
        app, image("http://www.example/page"), 400, "text/html", "unsupported_content_type"
    )


async def test_png_bomb_in_a_data_url(async_engine: AsyncEngine, png_bomb: bytes) -> None:
    url = "data:image/png;base64," + base64.b64encode(png_bomb).decode()
    app = attack_app(async_engine)
    await assert_refused(app, image(url), 400, "2500000000", "decompression_bomb")


async def test_file_urls_cannot_escape_the_allowed_directory(
    async_engine: AsyncEngine, tmp_path: Path
) -> None:
    allowed = tmp_path / "media"
    allowed.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    (allowed / "ok.png").write_bytes(png_bytes((56, 56)))
    os.symlink(secret, allowed / "link.png")
    app = attack_app(async_engine, MediaConfig(allowed_local_media_path=str(allowed)))
    for url in (f"file://{allowed}/../secret.png", f"file://{allowed}/link.png"):
        await assert_refused(app, image(url), 400, "outside the allowed", "path_not_allowed")
    async with client_for(app) as client:  # the directory itself works
        ok = await client.post(CHAT, json=chat_body(image(f"file://{allowed}/ok.png")))
    assert ok.status_code == 200, ok.text


async def test_ten_megabyte_data_url_is_a_413(async_engine: AsyncEngine) -> None:
    payload = base64.b64encode(os.urandom(10 * 1024 * 1024)).decode()
    app = attack_app(async_engine)
    await assert_refused(
        app,
        image("data:image/png;base64," + payload),
        413,
        "max_data_url_size is 8388608",
        "too_large",
    )


async def test_a_hundred_images_are_refused_before_any_fetch(async_engine: AsyncEngine) -> None:
    parts = [image(f"http://img{i}.example/a.png")[0] for i in range(100)]
    app = attack_app(async_engine)  # any lookup or connection would fail the test
    await assert_refused(
        app,
        parts,
        400,
        f"100 images in one request; this server allows at most {MAX_IMAGES}",
        param="messages",
    )


async def test_uuid_miss_names_the_uuid(async_engine: AsyncEngine) -> None:
    app = attack_app(async_engine)
    await assert_refused(
        app,
        image(uuid="never-seen-9f2"),
        400,
        "'never-seen-9f2' is not in the media cache",
        param=PART,
    )


async def test_uuid_only_request_is_identical(async_engine: AsyncEngine) -> None:
    url = "data:image/png;base64," + base64.b64encode(png_bytes((448, 448), (200, 30, 90))).decode()
    app = attack_app(async_engine)
    async with client_for(app) as client:
        bodies = [chat_body(image(url, "sku-448"), temperature=0, max_tokens=12)]
        bodies.append(chat_body(image(uuid="sku-448"), temperature=0, max_tokens=12))
        first, second = [await client.post(CHAT, json=body) for body in bodies]
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["choices"] == second.json()["choices"]
    assert first.json()["usage"]["prompt_tokens"] == second.json()["usage"]["prompt_tokens"]


def test_the_guard_is_active(network_guard: list[str]) -> None:
    """The network guard really is in force in this module."""
    import socket

    with pytest.raises(AssertionError, match="NETWORK RULE"):
        socket.getaddrinfo("example.com", 80)
    network_guard.clear()
