"""A model's media policy overrides: malformed ones name their field, wider-than-the-server
ones are named by `widenings`, `apply` never yields anything wider than the server whatever
the two say, and a narrowed connector checks both domain lists and shares the server-wide
fetch slots."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.fetch import MediaConnector
from vlmserve.multimodal.policy import NO_OVERRIDES, MediaOverrides, PolicyError

from .fakes import PUBLIC_IP, StubResolver, resolver_must_not_be_called, transport_must_not_be_built

SERVER = MediaConfig(
    allowed_media_domains=("*.example.com", "cdn.other.org"),
    allowed_media_ports=(80, 443),
    media_max_redirects=2,
    max_image_pixels=1_000_000,
)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"max_pixels": 5}, "max_pixels"),
        ({"allowed_media_domains": ()}, "allowed_media_domains"),
        ({"allowed_media_domains": "a.example.com"}, "allowed_media_domains"),
        ({"allowed_media_domains": ("a.example.com", "*.")}, "allowed_media_domains[1]"),
        ({"allowed_media_domains": ("*.*.example.com",)}, "allowed_media_domains[0]"),
        ({"allowed_media_domains": (" a.example.com",)}, "allowed_media_domains[0]"),
        ({"allowed_media_domains": (7,)}, "allowed_media_domains[0]"),
        ({"allow_private_media_addresses": "no"}, "allow_private_media_addresses"),
        ({"allowed_media_ports": (443, 70000)}, "allowed_media_ports[1]"),
        ({"allowed_media_ports": (True,)}, "allowed_media_ports[0]"),
        ({"media_max_redirects": -1}, "media_max_redirects"),
        ({"max_image_pixels": 0}, "max_image_pixels"),
        ({"max_bytes_per_request": 1.5}, "max_bytes_per_request"),
        ({"video_max_frames": True}, "video_max_frames"),
        ({"allowed_image_formats": ("PNG", "")}, "allowed_image_formats[1]"),
    ],
)
def test_malformed_overrides_name_their_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        MediaOverrides.from_dict(values)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({"allowed_media_domains": ["img.example.com", "*.cdn.example.com"]}, []),
        ({"allowed_media_domains": ["cdn.other.org", "*.example.com"]}, []),
        ({"allowed_media_domains": ["example.com"]}, ["allowed_media_domains[0]"]),
        ({"allowed_media_domains": ["*.other.org"]}, ["allowed_media_domains[0]"]),
        ({"allowed_media_domains": ["a.example.com", "evil.com"]}, ["allowed_media_domains[1]"]),
        ({"allow_private_media_addresses": False}, []),
        ({"allow_private_media_addresses": True}, ["allow_private_media_addresses"]),
        ({"allowed_media_ports": [443, 8443]}, ["allowed_media_ports[1]"]),
        ({"media_max_redirects": 2, "max_image_pixels": 10}, []),
        (
            {"media_max_redirects": 3, "max_bytes_per_item": 10**12},
            ["media_max_redirects", "max_bytes_per_item"],
        ),
        ({"allowed_image_formats": ["png", "TIFF"]}, ["allowed_image_formats[1]"]),
    ],
)
def test_widenings_name_every_override_the_server_does_not_allow(
    values: dict[str, Any], fields: list[str]
) -> None:
    problems = MediaOverrides.from_dict(values).widenings(SERVER)
    assert [p.field for p in problems] == fields
    # A server without a domain list allows any host: any narrowing list is within it.
    if "allowed_media_domains" in values:
        assert MediaOverrides.from_dict(values).widenings(MediaConfig()) == []


SERVERS = [
    MediaConfig(),
    MediaConfig(allow_private_media_addresses=True, allowed_media_ports=(80, 8080)),
    SERVER,
]
OVERRIDES = [
    NO_OVERRIDES,
    MediaOverrides(allow_private_media_addresses=True, allowed_media_ports=(8080, 9000)),
    MediaOverrides(allow_private_media_addresses=False, media_max_redirects=5),
    MediaOverrides(max_image_pixels=10**12, max_bytes_per_item=10, video_max_frames=4),
    MediaOverrides(allowed_image_formats=("png", "TIFF"), max_bytes_per_request=10**12),
]


@pytest.mark.parametrize(("server", "overrides"), list(itertools.product(SERVERS, OVERRIDES)))
def test_applied_overrides_never_widen_the_server(
    server: MediaConfig, overrides: MediaOverrides
) -> None:
    """Even overrides stored while the server's flags were wider (a registry outlives a
    restart) only narrow: every field is the server's or stricter."""
    policy = overrides.apply(server)
    assert policy.allow_private_media_addresses <= server.allow_private_media_addresses
    assert set(policy.allowed_media_ports) <= set(server.allowed_media_ports)
    assert set(policy.allowed_image_formats) <= set(server.allowed_image_formats)
    for name in ("media_max_redirects", "max_bytes_per_item", "max_image_pixels"):
        assert getattr(policy, name) <= getattr(server, name)
    assert policy.allowed_media_domains == server.allowed_media_domains  # checked apart
    given = overrides.to_dict()
    if given.get("allow_private_media_addresses") is False:
        assert not policy.allow_private_media_addresses
    if "max_bytes_per_item" in given:
        assert policy.max_bytes_per_item == min(10, server.max_bytes_per_item)


def test_to_dict_and_back() -> None:
    overrides = MediaOverrides(allowed_media_domains=("a.example.com",), max_image_pixels=9)
    assert overrides.to_dict() == {
        "allowed_media_domains": ["a.example.com"],
        "max_image_pixels": 9,
    }
    assert MediaOverrides.from_dict(overrides.to_dict()) == overrides
    assert NO_OVERRIDES.empty and not overrides.empty


async def refusal(connector: MediaConnector, url: str) -> MediaError:
    with pytest.raises(MediaError) as info:
        await connector.fetch(url, 0)
    return info.value


async def test_a_narrowed_connector_checks_the_server_and_the_model() -> None:
    server = MediaConnector(
        MediaConfig(allowed_media_domains=("*.example.com",), allow_private_media_addresses=True),
        resolver=StubResolver({"img.example.com": [["10.0.0.7"]]}),
        transport_factory=transport_must_not_be_built,
    )
    model = server.narrowed(
        MediaOverrides(
            allowed_media_domains=("img.example.com",), allow_private_media_addresses=False
        )
    )
    assert server.narrowed(NO_OVERRIDES) is server
    assert model._slots is server._slots  # one server-wide cap on fetches
    outside_model = await refusal(model, "http://cdn.example.com/a.png")
    assert outside_model.code is MediaErrorCode.DOMAIN_NOT_ALLOWED
    assert "media.allowed_media_domains" in outside_model.message
    outside_server = await refusal(model, "http://img.other.org/a.png")
    assert "--allowed-media-domains" in outside_server.message
    private = await refusal(model, "http://img.example.com/a.png")  # resolves to 10.0.0.7
    assert private.code is MediaErrorCode.BLOCKED_ADDRESS
    assert server.config.allow_private_media_addresses  # the server's own policy unchanged


async def test_a_model_cannot_open_a_port_its_server_keeps_closed() -> None:
    connector = MediaConnector(
        MediaConfig(),
        resolver=resolver_must_not_be_called,
        transport_factory=transport_must_not_be_built,
    )
    # Stored overrides wider than today's server (its flags changed since): still refused.
    model = connector.narrowed(MediaOverrides(allowed_media_ports=(8080,)))
    refused = await refusal(model, f"http://{PUBLIC_IP}:8080/a.png")
    assert refused.code is MediaErrorCode.PORT_NOT_ALLOWED
