"""`MediaOverrides`: what one served model narrows of the server's media policy (`MediaConfig`).

A model registered for, say, a partner's documents may fetch only from that partner's hosts,
take smaller images or fewer redirects than the server allows. It can never be granted more
than the server: `widenings` names every override that would widen the server's policy
(checked when the model is registered), and `apply` composes the two so that the narrower
side always wins, whatever the server's flags are by the time the model serves (a registry
outlives a restart with stricter flags). The domain allow-list is not composed into one list:
the connector checks the server's and then the model's (`MediaConnector.narrowed`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlmserve.config import MediaConfig
from vlmserve.multimodal.addresses import domain_allowed, normalize_host

# Upper bounds: the model's value applies when it is the smaller one.
_LIMITS = {
    "media_max_redirects": 0,  # the smallest value allowed
    "max_bytes_per_item": 1,
    "max_bytes_per_request": 1,
    "max_image_pixels": 1,
    "video_max_frames": 1,
}


class PolicyError(ValueError):
    """An override that is malformed or widens the server's policy. `field` is its path
    inside the overrides as the client wrote it (`allowed_media_domains[1]`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"'{field}': {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class MediaOverrides:
    """Fields left None keep the server's policy."""

    # Hosts ("img.example.com") or "*.suffix" patterns: a URL must match the server's list
    # (if it has one) and this one.
    allowed_media_domains: tuple[str, ...] | None = None
    allow_private_media_addresses: bool | None = None  # False narrows; True only if the server
    allowed_media_ports: tuple[int, ...] | None = None
    media_max_redirects: int | None = None
    max_bytes_per_item: int | None = None
    max_bytes_per_request: int | None = None
    max_image_pixels: int | None = None
    allowed_image_formats: tuple[str, ...] | None = None
    video_max_frames: int | None = None

    def __post_init__(self) -> None:
        _check_form(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MediaOverrides:
        """From JSON (lists for the tuples); `PolicyError` names an unknown or bad field."""
        known = {f.name for f in dataclasses.fields(cls)}
        for name in values:
            if name not in known:
                raise PolicyError(
                    str(name), f"is not a media setting a model may set; known: {', '.join(known)}"
                )
        given: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        """The fields that were given, as JSON values."""
        return {
            f.name: list(value) if isinstance(value, tuple) else value
            for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) is not None
        }

    @property
    def empty(self) -> bool:
        """Nothing overridden: the server's policy as it is."""
        return not self.to_dict()

    def widenings(self, server: MediaConfig) -> list[PolicyError]:
        """Every override that would allow more than `server` does (empty: it only narrows)."""
        problems = []
        patterns = server.allowed_media_domains
        for i, pattern in enumerate(self.allowed_media_domains or ()):
            if patterns and not _covered(pattern, patterns):
                problems.append(
                    PolicyError(
                        f"allowed_media_domains[{i}]",
                        f"{pattern!r} is outside the server's --allowed-media-domains "
                        f"({','.join(patterns)}): a model may only narrow them",
                    )
                )
        if self.allow_private_media_addresses and not server.allow_private_media_addresses:
            problems.append(
                PolicyError(
                    "allow_private_media_addresses",
                    "the server refuses private and loopback addresses (it was started without "
                    "--allow-private-media-addresses): a model cannot allow them",
                )
            )
        for i, port in enumerate(self.allowed_media_ports or ()):
            if port not in server.allowed_media_ports:
                problems.append(
                    PolicyError(
                        f"allowed_media_ports[{i}]",
                        f"{port} is not one of the server's --allowed-media-ports "
                        f"({','.join(map(str, server.allowed_media_ports))})",
                    )
                )
        for name in _LIMITS:
            value, limit = getattr(self, name), getattr(server, name)
            if value is not None and value > limit:
                problems.append(
                    PolicyError(name, f"{value} is above the server's limit of {limit}")
                )
        formats = {f.upper() for f in server.allowed_image_formats}
        for i, name in enumerate(self.allowed_image_formats or ()):
            if name.upper() not in formats:
                problems.append(
                    PolicyError(
                        f"allowed_image_formats[{i}]",
                        f"{name!r} is not one of the server's formats "
                        f"({','.join(server.allowed_image_formats)})",
                    )
                )
        return problems

    def apply(self, server: MediaConfig) -> MediaConfig:
        """`server` narrowed by these overrides: on every field the stricter side wins."""
        changes: dict[str, Any] = {
            name: min(value, getattr(server, name))
            for name in _LIMITS
            if (value := getattr(self, name)) is not None
        }
        if self.allow_private_media_addresses is not None:
            changes["allow_private_media_addresses"] = (
                server.allow_private_media_addresses and self.allow_private_media_addresses
            )
        if self.allowed_media_ports is not None:
            ports = self.allowed_media_ports
            changes["allowed_media_ports"] = tuple(
                p for p in server.allowed_media_ports if p in ports
            )
        if self.allowed_image_formats is not None:
            formats = {f.upper() for f in self.allowed_image_formats}
            changes["allowed_image_formats"] = tuple(
                f for f in server.allowed_image_formats if f.upper() in formats
            )
        return dataclasses.replace(server, **changes) if changes else server


def _covered(pattern: str, patterns: tuple[str, ...]) -> bool:
    """Whether every host `pattern` matches is matched by `patterns` too."""
    if not pattern.startswith("*."):
        return domain_allowed(normalize_host(pattern), patterns)
    suffix = normalize_host(pattern[2:])
    return any(
        p.startswith("*.")
        and (suffix == (wide := normalize_host(p[2:])) or suffix.endswith("." + wide))
        for p in patterns
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_form(o: MediaOverrides) -> None:
    domains = o.allowed_media_domains
    if domains is not None:
        if not isinstance(domains, tuple) or not domains:
            raise PolicyError("allowed_media_domains", "must be a non-empty list of hosts")
        for i, pattern in enumerate(domains):
            bare = pattern.removeprefix("*.") if isinstance(pattern, str) else ""
            if not bare or "*" in bare or not bare.isprintable() or bare != bare.strip():
                raise PolicyError(
                    f"allowed_media_domains[{i}]",
                    f"must be a host or '*.suffix', got {pattern!r}",
                )
            try:
                normalize_host(bare)
            except (ValueError, UnicodeError) as exc:
                raise PolicyError(f"allowed_media_domains[{i}]", f"bad host: {exc}") from None
    private = o.allow_private_media_addresses
    if private is not None and not isinstance(private, bool):
        raise PolicyError(
            "allow_private_media_addresses", f"must be true or false, got {private!r}"
        )
    ports = o.allowed_media_ports
    if ports is not None:
        if not isinstance(ports, tuple) or not ports:
            raise PolicyError("allowed_media_ports", "must be a non-empty list of ports")
        for i, port in enumerate(ports):
            if not _is_int(port) or not 0 < port < 65536:
                raise PolicyError(f"allowed_media_ports[{i}]", f"must be in 1..65535, got {port!r}")
    for name, least in _LIMITS.items():
        value = getattr(o, name)
        if value is not None and (not _is_int(value) or value < least):
            raise PolicyError(name, f"must be a whole number >= {least}, got {value!r}")
    formats = o.allowed_image_formats
    if formats is not None:
        if not isinstance(formats, tuple) or not formats:
            raise PolicyError("allowed_image_formats", "must be a non-empty list of formats")
        for i, name in enumerate(formats):
            if not isinstance(name, str) or not name.isalnum():
                raise PolicyError(
                    f"allowed_image_formats[{i}]",
                    f"must be a format name such as PNG, got {name!r}",
                )


NO_OVERRIDES = MediaOverrides()  # the server's policy as it is
