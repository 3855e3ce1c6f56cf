"""Attacks refused before any connection: each case uses a transport that fails the test if
it is ever built, and the network guard fails it on any socket to a non-loopback address."""

from __future__ import annotations

import pytest

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.fetch import Resolver, fetch_media, resolve_host

from .fakes import StubResolver, resolver_must_not_be_called, transport_must_not_be_built

pytestmark = pytest.mark.asyncio


async def refused(
    url: str,
    config: MediaConfig | None = None,
    resolver: Resolver = resolver_must_not_be_called,
    item_index: int = 3,
) -> MediaError:
    with pytest.raises(MediaError) as info:
        await fetch_media(
            url,
            item_index,
            config or MediaConfig(),
            resolver=resolver,
            transport_factory=transport_must_not_be_built,
        )
    assert info.value.item_index == item_index
    return info.value


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://2130706433/", "loopback"),  # decimal
        ("http://0x7f.1/", "loopback"),  # hex + short
        ("http://0177.0.0.1/", "loopback"),  # octal
        ("http://127.1/", "loopback"),  # short
        ("http://%31%32%37.0.0.1/", "loopback"),  # percent-encoded
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1 embedded in IPv6"),
        ("http://[::ffff:7f00:1]/", "127.0.0.1 embedded in IPv6"),
        ("http://[64:ff9b::a00:1]/", "10.0.0.1 embedded in IPv6"),  # NAT64
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata endpoint"),
        ("http://[fd00:ec2::254]/", "cloud metadata endpoint"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://10.1.2.3/", "private address"),
    ],
)
async def test_ip_literals_are_blocked_without_dns_or_connection(url: str, reason: str) -> None:
    error = await refused(url)
    assert error.code is MediaErrorCode.BLOCKED_ADDRESS
    assert error.status == 400
    assert reason in error.message
    assert "started with --allow-private-media-addresses" in error.message


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private address (RFC 1918)"),
        ("172.16.0.1", "private address (RFC 1918)"),
        ("192.168.0.10", "private address (RFC 1918)"),
        ("169.254.169.254", "cloud metadata endpoint"),
        ("127.0.0.1", "loopback"),
        ("100.64.1.1", "carrier-grade NAT"),
        ("fe80::1", "link-local"),
    ],
)
async def test_names_resolving_to_private_addresses_are_blocked(address: str, reason: str) -> None:
    resolver = StubResolver({"images.example.com": [[address]]})
    error = await refused("https://images.example.com/cat.png", resolver=resolver)
    assert error.code is MediaErrorCode.BLOCKED_ADDRESS
    assert f"'images.example.com' resolves to {address}" in error.message
    assert reason in error.message
    assert resolver.calls == ["images.example.com"]


async def test_one_private_answer_among_public_ones_blocks_the_name() -> None:
    resolver = StubResolver({"mixed.example.com": [["93.184.215.14", "10.0.0.7"]]})
    error = await refused("http://mixed.example.com/a.png", resolver=resolver)
    assert error.code is MediaErrorCode.BLOCKED_ADDRESS
    assert "10.0.0.7" in error.message


async def test_domain_outside_the_allow_list_is_refused_before_dns() -> None:
    config = MediaConfig(allowed_media_domains=("img.example.com", "*.cdn.example.com"))
    error = await refused("https://evil.example.net/a.png", config)
    assert error.code is MediaErrorCode.DOMAIN_NOT_ALLOWED
    assert "'evil.example.net'" in error.message
    # Suffix patterns match whole labels only.
    error = await refused("https://evilcdn.example.com/a.png", config)
    assert error.code is MediaErrorCode.DOMAIN_NOT_ALLOWED


async def test_allowed_domain_still_may_not_resolve_to_a_private_address() -> None:
    config = MediaConfig(allowed_media_domains=("*.cdn.example.com",))
    resolver = StubResolver({"a.cdn.example.com": [["169.254.169.254"]]})
    error = await refused("https://a.cdn.example.com/x.png", config, resolver)
    assert error.code is MediaErrorCode.BLOCKED_ADDRESS


@pytest.mark.parametrize("url", ["http://example.com:8080/a.png", "https://example.com:22/"])
async def test_disallowed_port_is_refused_before_dns(url: str) -> None:
    error = await refused(url)
    assert error.code is MediaErrorCode.PORT_NOT_ALLOWED
    assert "(--allowed-media-ports 80,443)" in error.message
    assert "--allow-private-media-addresses" not in error.message  # example.com: public


@pytest.mark.parametrize(
    ("url", "needs"),
    [
        ("http://127.0.0.1:8080/a.png", "127.0.0.1 is a loopback address"),
        ("http://localhost:8080/a.png", "localhost is a loopback name"),
        ("http://192.168.1.5:8080/a.png", "192.168.1.5 is a private address (RFC 1918)"),
    ],
)
async def test_local_test_server_refusal_names_every_flag_it_needs(url: str, needs: str) -> None:
    error = await refused(url)
    assert error.message.endswith(
        "the server must be started with --allowed-media-ports 80,443,8080 and "
        f"--allow-private-media-addresses ({needs})"
    )
    # With the private flag already on, only the port is left to name.
    error = await refused(url, MediaConfig(allow_private_media_addresses=True))
    assert error.message.endswith("started with --allowed-media-ports 80,443,8080")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "gopher://127.0.0.1:6379/_FLUSHALL", "jar:x", "dict://x/"]
)
async def test_other_schemes_are_refused(url: str) -> None:
    error = await refused(url)
    assert error.code is MediaErrorCode.SCHEME_NOT_ALLOWED


async def test_file_urls_are_disabled_by_default() -> None:
    error = await refused("file:///etc/passwd")
    assert error.code is MediaErrorCode.SCHEME_NOT_ALLOWED
    assert "--allowed-local-media-path DIR" in error.message


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://user:pw@example.com/a.png", "credentials"),
        ("http://256.1.1.1/", "invalid IPv4"),
        ("http:///a.png", "bad host"),
        ("http://exa mple.com/", "bad host"),
        ("http://example.com:99999/", "invalid media URL"),
    ],
)
async def test_malformed_urls_are_invalid(url: str, fragment: str) -> None:
    error = await refused(url)
    assert error.code is MediaErrorCode.INVALID_URL
    assert fragment in error.message


async def test_unresolvable_host_is_a_fetch_failure() -> None:
    error = await refused("http://nowhere.example.com/", resolver=StubResolver({}))
    assert error.code is MediaErrorCode.FETCH_FAILED
    assert "cannot resolve" in error.message


async def test_default_resolver_returns_each_address_once() -> None:
    # A numeric loopback host: getaddrinfo answers locally (the network guard allows it).
    assert [str(ip) for ip in await resolve_host("127.0.0.1", 80)] == ["127.0.0.1"]
