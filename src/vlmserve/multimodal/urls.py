"""Media URL checks made before any network work: scheme, credentials, host spelling (percent-
decoded and normalised like browsers do), the server's and a model's domain allow-lists, and the
port. The connector (`fetch.py`) then resolves and pins the checked target.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

from vlmserve.config import MediaConfig
from vlmserve.multimodal.addresses import (
    IPAddress,
    blocked_reason,
    domain_allowed,
    normalize_host,
    parse_ip_host,
)
from vlmserve.multimodal.errors import MediaError, MediaErrorCode

_HOST_CHARS = frozenset(string.ascii_lowercase + string.digits + "-._")


@dataclass(frozen=True)
class Target:
    """One checked http(s) URL, split into what the pinned request needs."""

    scheme: str
    host: str  # normalized domain name or IP text: the Host header and the TLS server name
    port: int
    path: str  # path and query
    ip: IPAddress | None  # set when the URL names an address rather than a domain

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        return host if self.port == default_port else f"{host}:{self.port}"

    def pinned_url(self, ip: IPAddress) -> httpx.URL:
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        return httpx.URL(f"{self.scheme}://{netloc}:{self.port}{self.path}")


def check_url(
    url: str, item_index: int, config: MediaConfig, model_domains: tuple[str, ...] = ()
) -> Target:
    """`url` checked against the media policy before any DNS lookup (scheme, credentials,
    host spelling, domain allow-lists, port), split into what the pinned request needs.
    `model_domains` is a served model's own allow-list, on top of the server's."""

    def invalid(reason: str) -> MediaError:
        return MediaError(MediaErrorCode.INVALID_URL, f"invalid media URL: {reason}", item_index)

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):  # reached by redirects to file:, data:, gopher:, ...
        raise MediaError(
            MediaErrorCode.SCHEME_NOT_ALLOWED,
            f"URL scheme {scheme!r} is not allowed for a fetched URL; use http or https",
            item_index,
        )
    if parts.username is not None or parts.password is not None:
        raise invalid("credentials in the URL are not allowed")
    # Percent-decoded like browsers do, so `%31%32%37.0.0.1` is judged as 127.0.0.1.
    host = unquote(parts.hostname or "")
    try:
        if ":" not in host:
            host = normalize_host(host)
        ip = parse_ip_host(host)
    except (ValueError, UnicodeError) as exc:
        raise invalid(f"bad host: {exc}") from None
    if ip is not None:
        host = str(ip)
    elif not host or not set(host) <= _HOST_CHARS:
        raise invalid(f"bad host {host!r}")
    patterns = config.allowed_media_domains
    if patterns and not domain_allowed(host, patterns):
        raise MediaError(
            MediaErrorCode.DOMAIN_NOT_ALLOWED,
            f"host {host!r} is not in the server's --allowed-media-domains ({','.join(patterns)})",
            item_index,
        )
    if model_domains and not domain_allowed(host, model_domains):
        raise MediaError(
            MediaErrorCode.DOMAIN_NOT_ALLOWED,
            f"host {host!r} is not in this model's allowed media domains "
            f"({','.join(model_domains)}: media.allowed_media_domains of its "
            "registration)",
            item_index,
        )
    port = port if port is not None else (443 if scheme == "https" else 80)
    if port not in config.allowed_media_ports:
        allowed = ",".join(map(str, config.allowed_media_ports))
        # Everything the URL still needs, in one message: a local test media server
        # (127.0.0.1:8080) needs the port and the private-address flag.
        needs = f"--allowed-media-ports {allowed},{port}"
        reason = None if config.allow_private_media_addresses else _local_hint(host, ip)
        if reason is not None:
            needs += f" and --allow-private-media-addresses ({host} is a {reason})"
        raise MediaError(
            MediaErrorCode.PORT_NOT_ALLOWED,
            f"port {port} is not allowed (--allowed-media-ports {allowed}); to fetch this "
            f"URL the server must be started with {needs}",
            item_index,
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, path, ip)


def _local_hint(host: str, ip: IPAddress | None) -> str | None:
    """Why a host is not public, as far as is known before any DNS lookup: a literal
    address, or a name reserved for this machine (RFC 6761's `localhost`)."""
    if ip is not None:
        return blocked_reason(ip)
    return "loopback name" if host == "localhost" or host.endswith(".localhost") else None
