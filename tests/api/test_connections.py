"""What a client can hold on a real connection, and for how long: an unauthenticated body
is refused before it is read, a request head that never completes is cut off, a head over
16 KiB is refused with 431, and the connection cap turns the overflow away with 503 instead
of letting it queue."""

from __future__ import annotations

import socket
import time

import httpx

from tests.api.conftest import MODEL, make_app
from tests.api.live_server import live_server
from vlmserve.api.http_protocol import MAX_HEAD_BYTES
from vlmserve.api.server_config import ServerConfig
from vlmserve.engine.async_engine import AsyncEngine

MiB = 1024 * 1024


def read_response(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent until it closed the connection (or `timeout` passed). A server
    that closes with our bytes unread resets the connection (RST) after its answer."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_unauthenticated_body_is_refused_unread(async_engine: AsyncEngine) -> None:
    config = ServerConfig(api_key="k", body_read_timeout=120)
    with live_server(make_app(async_engine, api_key="k", body_read_timeout=120), config) as (
        host,
        port,
    ):
        with socket.create_connection((host, port)) as sock:
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\nContent-Length: {30 * MiB}\r\n\r\n"
            )
            sock.sendall(head.encode() + b"[" * MiB)  # 1 of the 30 MiB promised
            started = time.monotonic()
            answer = read_response(sock, timeout=10)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert time.monotonic() - started < 5  # not after a body that never comes
        # A client with the key is not refused.
        response = httpx.get(
            f"http://{host}:{port}/v1/models", headers={"Authorization": "Bearer k"}
        )
        assert response.status_code == 200 and response.json()["data"][0]["id"] == MODEL


def test_a_request_head_must_arrive_in_time(async_engine: AsyncEngine) -> None:
    config = ServerConfig(header_read_timeout=0.5)
    with live_server(make_app(async_engine), config) as (host, port):
        with (
            socket.create_connection((host, port)) as half,
            socket.create_connection((host, port)) as silent,
        ):
            half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert read_response(half, timeout=10) == b""  # closed, nothing answered
            assert read_response(silent, timeout=10) == b""
            assert time.monotonic() - started < 5
        # A normal client on a kept-alive connection is not cut between its requests.
        with httpx.Client(base_url=f"http://{host}:{port}") as client:
            assert client.get("/health").status_code == 200
            time.sleep(1.0)  # longer than the head deadline, shorter than keep-alive
            assert client.get("/health").status_code == 200


def test_a_request_head_is_bounded_in_size(async_engine: AsyncEngine) -> None:
    config = ServerConfig(header_read_timeout=30)
    with live_server(make_app(async_engine), config) as (host, port):
        # A whole head in one write: measured once it is parsed.
        with socket.create_connection((host, port)) as sock:
            pad = b"a" * (MAX_HEAD_BYTES + 1024)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad + b"\r\n\r\n")
            answer = read_response(sock, timeout=10)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"connection: close" in answer.lower()
        # A header that never ends, in pieces: cut once it passes the bound, long before the
        # head deadline (the parser would otherwise buffer it for as long as it comes).
        with socket.create_connection((host, port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            started = time.monotonic()
            for _ in range(MAX_HEAD_BYTES // 1024 + 1):
                sock.sendall(b"a" * 1024)
                time.sleep(0.002)
            answer = read_response(sock, timeout=10)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert time.monotonic() - started < 5
        # Under the bound, and a large body behind a small head, are served as usual.
        with httpx.Client(base_url=f"http://{host}:{port}") as client:
            pad_header = {"X-Pad": "a" * (MAX_HEAD_BYTES - 2048)}
            assert client.get("/health", headers=pad_header).status_code == 200
            body = {"model": MODEL, "prompt": "a" * MiB, "max_tokens": 1}
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 400 and "characters" in response.text


def test_connections_over_the_cap_get_503(async_engine: AsyncEngine) -> None:
    config = ServerConfig(limit_concurrency=4, header_read_timeout=1.0)
    with live_server(make_app(async_engine), config) as (host, port):
        idle = [socket.create_connection((host, port)) for _ in range(4)]
        try:
            time.sleep(0.2)
            assert httpx.get(f"http://{host}:{port}/health").status_code == 503
        finally:
            for sock in idle:
                sock.close()
        # The held connections were cut by the head deadline or closed: room again.
        deadline = time.monotonic() + 10
        while httpx.get(f"http://{host}:{port}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
