"""HTTPS through a pinned connection: the socket goes to the checked IP while TLS still sends
the original host name (SNI) and verifies the certificate against it."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from vlmserve.config import MediaConfig
from vlmserve.multimodal.errors import MediaError, MediaErrorCode
from vlmserve.multimodal.fetch import fetch_media

from .fakes import LocalServer, StubResolver, png_bytes, static

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]
PNG = png_bytes()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a leaf certificate for `media.test`, valid for one day."""
    folder = tmp_path_factory.mktemp("tls")
    (folder / "san.cnf").write_text("subjectAltName=DNS:media.test\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=vlmserve test CA",
        ],
        ["req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=media.test"],
        [
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
        ],
    ]
    for command in commands:
        subprocess.run(["openssl", *command], cwd=folder, check=True, capture_output=True)
    return folder


@pytest_asyncio.fixture
async def tls_server(certs: Path) -> AsyncIterator[tuple[LocalServer, list[str | None]]]:
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    server = LocalServer(tls=context)
    server.routes["/cat.png"] = static(PNG)
    await server.start()
    yield server, server_names
    await server.stop()


def trusting_transport(certs: Path) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(
        verify=ssl.create_default_context(cafile=str(certs / "ca.pem")), retries=0
    )


async def test_https_sends_sni_and_verifies_the_original_host(
    certs: Path, tls_server: tuple[LocalServer, list[str | None]]
) -> None:
    server, server_names = tls_server
    resolver = StubResolver({"media.test": [["127.0.0.1"]]})
    config = MediaConfig(allowed_media_ports=(server.port,), allow_private_media_addresses=True)
    data = await fetch_media(
        f"https://media.test:{server.port}/cat.png",
        0,
        config,
        resolver=resolver,
        transport_factory=lambda: trusting_transport(certs),
    )
    assert data == PNG
    assert server_names == ["media.test"]
    assert server.requests[0].headers["host"] == f"media.test:{server.port}"
    assert resolver.calls == ["media.test"]


async def test_certificate_for_another_name_is_rejected(
    certs: Path, tls_server: tuple[LocalServer, list[str | None]]
) -> None:
    server, server_names = tls_server
    resolver = StubResolver({"other.test": [["127.0.0.1"]]})
    config = MediaConfig(allowed_media_ports=(server.port,), allow_private_media_addresses=True)
    with pytest.raises(MediaError) as info:
        await fetch_media(
            f"https://other.test:{server.port}/cat.png",
            0,
            config,
            resolver=resolver,
            transport_factory=lambda: trusting_transport(certs),
        )
    assert info.value.code is MediaErrorCode.FETCH_FAILED
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message
    assert server_names == ["other.test"]
    assert server.requests == []
