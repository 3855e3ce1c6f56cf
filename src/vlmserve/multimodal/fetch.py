"""The SSRF-safe media connector: turns a media URL into bytes under the media policy.

Owns network fetching: URL checks (`urls.py`: scheme, host, port, domain allow-list), one DNS resolution
per hop whose every address must pass the address policy, a connection pinned to the checked
address (no second lookup, so no DNS rebinding), manual redirects re-checked hop by hop, and
limits enforced while the body streams (bytes, time, content type). `data:` and `file:` URLs
are delegated to `local.py`. See docs/media.md for the policy and its reasons.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urljoin

import httpx

from vlmserve.config import MediaConfig
from vlmserve.multimodal.addresses import (
    IPAddress,
    blocked_reason,
)
from vlmserve.multimodal.budget import ByteBudget
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.formats import MediaKind, require_allowed_format
from vlmserve.multimodal.local import load_data_url, load_file_url
from vlmserve.multimodal.policy import MediaOverrides
from vlmserve.multimodal.urls import Target, check_url

# (host, port) -> every address the host resolves to. Tests inject stubs here.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
# Builds the transport of one fetch. Tests inject fake networks here.
TransportFactory = Callable[[], httpx.AsyncBaseTransport]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address of `host`, from one getaddrinfo call in a worker thread."""
    infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(sockaddr[0])
            if ip not in addresses:
                addresses.append(ip)
    return addresses


class MediaConnector:
    """Fetches media URLs under one `MediaConfig`. Create one per server: it owns the
    semaphore that caps concurrent network fetches across all requests."""

    def __init__(
        self,
        config: MediaConfig,
        *,
        resolver: Resolver = resolve_host,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.config = config
        self._resolver = resolver
        if transport_factory is None:
            # One SSL context for all fetches: loading the CA bundle costs milliseconds.
            ssl_context = httpx.create_ssl_context()

            def transport_factory() -> httpx.AsyncBaseTransport:
                return httpx.AsyncHTTPTransport(verify=ssl_context, retries=0)

        self._transport_factory = transport_factory
        self._slots = asyncio.Semaphore(config.max_concurrent_fetches)
        self.model_domains: tuple[str, ...] = ()  # a served model's own allow-list (narrowed)
        timeout = config.media_fetch_timeout
        self._timeout = httpx.Timeout(
            connect=timeout.connect, read=timeout.read, write=timeout.read, pool=timeout.connect
        )

    def narrowed(self, overrides: MediaOverrides) -> MediaConnector:
        """This connector under a model's narrower policy (policy.py), sharing the fetch
        slots (the server-wide cap), DNS and network."""
        if overrides.empty:
            return self
        view = copy.copy(self)
        view.config = overrides.apply(self.config)
        view.model_domains = overrides.allowed_media_domains or ()
        return view

    async def fetch(
        self,
        url: str,
        item_index: int,
        *,
        kind: MediaKind = MediaKind.IMAGE,
        budget: ByteBudget | None = None,
    ) -> bytes:
        """The bytes behind `url`, or MediaError naming why they may not be used."""
        if budget is None:
            budget = ByteBudget(self.config.max_bytes_per_request)
        scheme = url.partition(":")[0].lower()
        if scheme == "data":
            return load_data_url(url, item_index, kind, self.config, budget)
        if scheme == "file":
            data = await asyncio.to_thread(load_file_url, url, item_index, kind, self.config)
            budget.charge(len(data), item_index)
            return data
        if scheme not in ("http", "https"):
            raise MediaError(
                MediaErrorCode.SCHEME_NOT_ALLOWED,
                f"URL scheme {scheme!r} is not allowed; use http, https, data or file",
                item_index,
            )
        total = self.config.media_fetch_timeout.total
        async with self._slots:
            # The deadline starts once a slot is held: queueing behind other fetches is not
            # this URL's fault. It covers DNS, every redirect hop and slow-drip bodies.
            try:
                async with asyncio.timeout(total):
                    return await self._fetch_http(url, item_index, kind, budget)
            except TimeoutError:
                raise MediaError(
                    MediaErrorCode.TIMEOUT,
                    f"fetching the URL took longer than the total timeout of {total}s",
                    item_index,
                ) from None

    async def _fetch_http(
        self, url: str, item_index: int, kind: MediaKind, budget: ByteBudget
    ) -> bytes:
        max_redirects = self.config.media_max_redirects
        hops = 0
        while True:
            target = check_url(url, item_index, self.config, self.model_domains)
            addresses = await self._checked_addresses(target, item_index)
            async with httpx.AsyncClient(
                transport=self._transport_factory(),
                # No proxies or .netrc credentials from the environment: a proxy would make
                # its own DNS lookup (undoing the pin) and could reach internal networks.
                trust_env=False,
                follow_redirects=False,
                timeout=self._timeout,
            ) as client:
                response = await self._send_pinned(client, target, addresses, kind, item_index)
                try:
                    location = response.headers.get("location")
                    if response.status_code not in _REDIRECT_STATUSES or location is None:
                        return await self._read_body(response, target, item_index, kind, budget)
                finally:
                    await response.aclose()
            if hops == max_redirects:
                limit = (
                    "redirects are off on this server (--media-max-redirects 0)"
                    if max_redirects == 0
                    else f"more than --media-max-redirects {max_redirects} redirects"
                )
                raise MediaError(
                    MediaErrorCode.TOO_MANY_REDIRECTS,
                    f"{target.host} answered HTTP {response.status_code} (redirect); {limit}",
                    item_index,
                )
            hops += 1
            try:
                url = urljoin(url, location)  # the next hop is checked from scratch
            except ValueError as exc:
                raise MediaError(
                    MediaErrorCode.INVALID_URL,
                    f"{target.host} redirected to an invalid URL: {exc}",
                    item_index,
                ) from None

    async def _checked_addresses(self, target: Target, item_index: int) -> list[IPAddress]:
        if target.ip is not None:
            addresses = [target.ip]
        else:
            try:
                addresses = list(await self._resolver(target.host, target.port))
            except OSError as exc:
                raise MediaError(
                    MediaErrorCode.FETCH_FAILED,
                    f"cannot resolve host {target.host!r}: {exc}",
                    item_index,
                ) from None
            if not addresses:
                raise MediaError(
                    MediaErrorCode.FETCH_FAILED, f"host {target.host!r} has no address", item_index
                )
        if not self.config.allow_private_media_addresses:
            # Every address must pass, not just the first: a name answering with a public
            # and a private address must not get a chance to be connected to the private one.
            for ip in addresses:
                reason = blocked_reason(ip)
                if reason is not None:
                    how = "is" if target.ip is not None else "resolves to"
                    raise MediaError(
                        MediaErrorCode.BLOCKED_ADDRESS,
                        f"host {target.host!r} {how} {ip}, a {reason}; media are fetched "
                        "from public addresses only, unless the server is started with "
                        "--allow-private-media-addresses (trusted networks only)",
                        item_index,
                    )
        return addresses

    async def _send_pinned(
        self,
        client: httpx.AsyncClient,
        target: Target,
        addresses: list[IPAddress],
        kind: MediaKind,
        item_index: int,
    ) -> httpx.Response:
        # The URL names the checked IP, so nothing below resolves the name again; the Host
        # header and TLS server name (SNI, and the name the certificate must match) keep the
        # original host.
        headers = {"Host": target.host_header, "Accept": f"{kind}/*", "Accept-Encoding": "identity"}
        extensions = {"sni_hostname": target.host} if target.ip is None else {}
        last_error = ""
        for ip in addresses:  # all checked; the next one is tried only if connecting fails
            try:
                request = client.build_request(
                    "GET", target.pinned_url(ip), headers=headers, extensions=extensions
                )
                return await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = str(exc)
            except httpx.TimeoutException as exc:
                raise _timeout_error(exc, item_index) from None
            except httpx.HTTPError as exc:
                raise MediaError(
                    MediaErrorCode.FETCH_FAILED,
                    f"fetching from {target.host} failed: {exc}",
                    item_index,
                ) from None
            except (httpx.InvalidURL, ValueError) as exc:
                # Not HTTPErrors: a URL httpx cannot encode (a lone surrogate, a path over
                # 64 KiB), or a redirect's Location it cannot parse — httpx reads Location
                # even with redirects off (`data:...` from any public host raised this).
                raise MediaError(
                    MediaErrorCode.INVALID_URL,
                    f"invalid media URL or redirect from {target.host}: {exc}",
                    item_index,
                ) from None
        raise MediaError(
            MediaErrorCode.FETCH_FAILED,
            f"cannot connect to {target.host}:{target.port}: {last_error}",
            item_index,
        )

    async def _read_body(
        self,
        response: httpx.Response,
        target: Target,
        item_index: int,
        kind: MediaKind,
        budget: ByteBudget,
    ) -> bytes:
        if not response.is_success:
            raise MediaError(
                MediaErrorCode.FETCH_FAILED,
                f"{target.host} answered HTTP {response.status_code}",
                item_index,
            )
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        labelled = content_type.startswith(f"{kind}/")
        # Unlabelled bytes are accepted only if they sniff as an allowed format (checked below).
        if not labelled and content_type not in ("", "application/octet-stream"):
            raise MediaError(
                MediaErrorCode.UNSUPPORTED_CONTENT_TYPE,
                f"expected {kind}/* content, {target.host} sent {content_type!r}",
                item_index,
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Compressed bodies would have to be inflated to be bounded: a gzip bomb.
            raise MediaError(
                MediaErrorCode.UNSUPPORTED_CONTENT_TYPE,
                f"compressed responses are refused (Content-Encoding: {encoding})",
                item_index,
            )
        limit = self.config.max_bytes_per_item
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _item_too_large(int(declared), limit, item_index)
        chunks: list[bytes] = []
        size = 0
        try:
            # Raw chunks, counted as they arrive: a lying or absent Content-Length can make
            # us read at most one chunk past the limit.
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > limit:
                    raise _item_too_large(size, limit, item_index)
                budget.charge(len(chunk), item_index)
                chunks.append(chunk)
        except httpx.TimeoutException as exc:
            raise _timeout_error(exc, item_index) from None
        except httpx.HTTPError as exc:
            raise MediaError(
                MediaErrorCode.FETCH_FAILED, f"reading from {target.host} failed: {exc}", item_index
            ) from None
        data = b"".join(chunks)
        if not labelled:
            require_allowed_format(data, kind, item_index, self.config)
        return data


async def fetch_media(
    url: str,
    item_index: int,
    config: MediaConfig,
    *,
    kind: MediaKind = MediaKind.IMAGE,
    budget: ByteBudget | None = None,
    resolver: Resolver = resolve_host,
    transport_factory: TransportFactory | None = None,
) -> bytes:
    """One-off fetch with its own connector (servers keep one `MediaConnector` instead)."""
    connector = MediaConnector(config, resolver=resolver, transport_factory=transport_factory)
    return await connector.fetch(url, item_index, kind=kind, budget=budget)


def _timeout_error(exc: httpx.TimeoutException, item_index: int) -> MediaError:
    phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for data"
    return MediaError(
        MediaErrorCode.TIMEOUT, f"timed out {phase} ({type(exc).__name__})", item_index
    )


def _item_too_large(num_bytes: int, limit: int, item_index: int) -> MediaError:
    return MediaError(
        MediaErrorCode.TOO_LARGE,
        f"media item is over {limit} bytes (max_bytes_per_item; got at least {num_bytes})",
        item_index,
    )
