"""The media attack suite through `serve --ray`: requests go through Serve's HTTP proxy to our
ingress deployment, which fetches media (replicas receive decoded media only), so the refusals
must come from the ingress replica's process under the same policy as the embedded server.

Blocked addresses in every numeric form; redirects from an allowed host to a blocked one
(refused at the hop: the blocked target is never asked); DNS rebinding (a name answering a
public address first and loopback afterwards: the connection is pinned to the checked address,
and a redirect back to the name is looked up and checked again).

NETWORK RULE (tests/multimodal/fakes.py), kept inside the ingress process: its resolver is a
`StubResolver` (an unknown name fails the request) and its network a `FakeInternet` that routes
only PUBLIC_IP:80, to a loopback server in this test process; any other destination fails the
request. Both travel to the ingress in `Options` as copies, so what they record stays there:
the witness here is what the loopback server was asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.cluster.conftest import STARTUP_S, RayInstance
from tests.cluster.vlmserve_app import CHAT, USER, Deployed, deployed, options
from tests.multimodal.fakes import (
    PUBLIC_IP,
    FakeInternet,
    LocalServer,
    StubResolver,
    png_bytes,
    redirect,
    static,
)
from vlmserve.config import MediaConfig
from vlmserve.multimodal.policy import MediaOverrides
from vlmserve.registry import ModelSpec

# One loop for the module: the loopback server must answer while the tests run.
pytestmark = [pytest.mark.ray, pytest.mark.asyncio(loop_scope="module")]

MODEL = "viewer"
NARROW = "narrow"  # a registration that allows no redirect
PART = "messages[0].content[0]"
# Rebinding names answer public first, loopback afterwards; each is used by one test only,
# since the ingress's resolver counts lookups for the whole module.
RESOLVER = StubResolver(
    {
        "cdn.example": [[PUBLIC_IP]],
        "localhost": [["127.0.0.1"]],
        "intranet.example": [["10.0.0.7"]],
        "rebind.example": [[PUBLIC_IP], ["127.0.0.1"]],
        "rebind-hop.example": [[PUBLIC_IP], ["127.0.0.1"]],
    }
)
# Each numeric form of a private address (refused before any lookup), and a name that
# resolves to loopback (refused after its lookup): no connection is opened for any of them.
BLOCKED = [
    ("http://127.0.0.1/cat.png", "loopback address"),
    ("http://localhost/cat.png", "loopback address"),
    ("http://10.1.2.3/cat.png", "private address (RFC 1918)"),
    ("http://192.168.0.1/cat.png", "private address (RFC 1918)"),
    ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata endpoint"),
    ("http://2130706433/cat.png", "loopback address"),
    ("http://0x7f.1/cat.png", "loopback address"),
    ("http://0177.0.0.1/cat.png", "loopback address"),
    ("http://%31%32%37.0.0.1/cat.png", "loopback address"),
    ("http://[::1]/cat.png", "loopback address"),
    ("http://[::ffff:127.0.0.1]/cat.png", "loopback address"),
    ("http://[::ffff:a9fe:a9fe]/cat.png", "cloud metadata endpoint"),
    ("http://0.0.0.0/cat.png", "unspecified"),
]
# Redirects from the allowed public host to blocked targets: (its path, target, reason).
REDIRECTS = [
    ("/to-loopback", "http://127.0.0.1/secret", "loopback address"),
    ("/to-mapped-loopback", "http://[::ffff:7f00:1]/secret", "loopback address"),
    ("/to-metadata", "http://169.254.169.254/latest/meta-data/iam/", "cloud metadata endpoint"),
    ("/to-intranet", "http://intranet.example/secret", "10.0.0.7"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web() -> AsyncIterator[LocalServer]:
    """The "public" web server (PUBLIC_IP:80 through the fake internet)."""
    local = LocalServer()
    local.routes["/cat.png"] = static(png_bytes((56, 56)))
    local.routes["/secret"] = static(png_bytes())  # what no attack may reach
    for path, target, _ in REDIRECTS:
        local.routes[path] = redirect(target)
    local.routes["/back-to-the-name"] = redirect("http://rebind-hop.example/cat.png")
    await local.start()
    yield local
    await local.stop()


@pytest.fixture(scope="module")
def vlmserve_app(
    ray_instance: RayInstance,
    web: LocalServer,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_qwen2_vl: Path,
) -> Iterator[Deployed]:
    """The vlmserve application (redirects followed, up to 3 hops, each checked), with the
    pinned model `viewer` and the model `narrow` (its registration allows no redirect),
    fetching through the stub resolver and the fake internet."""
    registry = tmp_path_factory.mktemp("ray-media-registry") / "registry.db"
    internet = FakeInternet({(PUBLIC_IP, 80): web.port})
    narrow = ModelSpec(NARROW, str(tiny_qwen2_vl), media=MediaOverrides(media_max_redirects=0))
    with deployed(
        ray_instance,
        options(
            registry,
            [ModelSpec(MODEL, str(tiny_qwen2_vl), pinned=True), narrow],
            tiny_qwen2_vl,
            media=MediaConfig(media_max_redirects=3),
            media_resolver=RESOLVER,
            media_transport=internet.factory,
        ),
    ) as app:
        yield app


def image(url: str, model: str = MODEL) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
    }


async def post(app: Deployed, url: str, model: str = MODEL) -> httpx.Response:
    async with httpx.AsyncClient(base_url=app.url, timeout=STARTUP_S + 60) as client:
        return await client.post(CHAT, json=image(url, model), headers=USER)


def assert_blocked(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == PART and error["code"] == "blocked_address", error
    assert error["message"].startswith(f"{PART}: ") and reason in error["message"], error


@pytest.mark.parametrize(("url", "reason"), BLOCKED)
async def test_blocked_addresses_are_refused_by_the_ingress(
    vlmserve_app: Deployed, url: str, reason: str
) -> None:
    assert_blocked(await post(vlmserve_app, url), reason)


@pytest.mark.parametrize(("path", "target", "reason"), REDIRECTS)
async def test_a_redirect_to_a_blocked_address_is_refused_at_the_hop(
    vlmserve_app: Deployed, web: LocalServer, path: str, target: str, reason: str
) -> None:
    asked = len(web.requests)
    assert_blocked(await post(vlmserve_app, f"http://cdn.example{path}"), reason)
    # The allowed host was asked; the blocked target never was (nor the secret through it).
    assert web.paths()[asked:] == [path]


async def test_dns_rebinding_cannot_switch_the_connection_to_loopback(
    vlmserve_app: Deployed, web: LocalServer
) -> None:
    """The name answers public, then loopback: the image comes from the public address
    (the connection is pinned to the address that was checked). A second lookup would have
    reached an unrouted destination and failed the request."""
    asked = len(web.requests)
    response = await post(vlmserve_app, "http://rebind.example/cat.png")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("length", "stop")
    (request,) = web.requests[asked:]
    assert request.path == "/cat.png" and request.headers["host"] == "rebind.example"


async def test_dns_rebinding_is_checked_again_at_each_redirect_hop(
    vlmserve_app: Deployed, web: LocalServer
) -> None:
    """The first hop resolves public; its redirect back to the same name resolves again,
    now to loopback, and is refused."""
    asked = len(web.requests)
    response = await post(vlmserve_app, "http://rebind-hop.example/back-to-the-name")
    assert_blocked(response, "127.0.0.1")
    assert web.paths()[asked:] == ["/back-to-the-name"]


async def test_a_registration_narrows_the_policy_where_media_is_fetched(
    vlmserve_app: Deployed, web: LocalServer
) -> None:
    """The server follows redirects; the `narrow` model's registration allows none: its
    redirect is refused at the 3xx itself (the ingress fetches under the model's policy)."""
    asked = len(web.requests)
    response = await post(vlmserve_app, "http://cdn.example/to-loopback", NARROW)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == PART and error["code"] == "too_many_redirects", error
    assert "302" in error["message"], error
    assert web.paths()[asked:] == ["/to-loopback"]
