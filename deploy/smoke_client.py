"""The client half of deploy/smoke.sh: talks to a vlmserve container and checks its answers.

Run inside the container's network namespace (smoke.sh uses `nsenter --net`), so every
request goes to the container's own loopback and nothing crosses a network. Standard
library plus jsonschema; exits non-zero with a message naming the failed check.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import jsonschema

# A content-safety style answer: enum, boolean and a bounded string, no extra keys.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "unsafe": {"type": "boolean"},
        "category": {"type": "string", "enum": ["none", "violence", "adult", "other"]},
        "reason": {"type": "string", "maxLength": 40},
    },
    "required": ["unsafe", "category", "reason"],
    "additionalProperties": False,
}


class SmokeError(Exception):
    pass


def png_data_url(size: int = 64) -> str:
    """A gradient PNG as a data URL, written with zlib so the client needs no imaging library."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(size) for v in (4 * x % 256, 4 * y % 256, 128))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


def request(url: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(base: str, started: float, limit: float) -> float:
    """Polls /ready until 200; returns seconds since `started` (the `docker run`)."""
    deadline = started + limit
    last = "no answer yet"
    while time.time() < deadline:
        try:
            status, _ = request(f"{base}/ready", timeout=5)
            if status == 200:
                return time.time() - started
            last = f"/ready answered {status}"
        except (OSError, ValueError) as exc:  # refused while the model loads
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise SmokeError(f"/ready not 200 within {limit:.0f} s of docker run ({last})")


def check_listening_on_all_interfaces(port: int) -> None:
    """The server must bind 0.0.0.0 in a container. /proc/net/tcp lists the sockets of the
    reader's network namespace, i.e. the container's here."""
    wanted = f"00000000:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            return
    raise SmokeError(f"nothing listens on 0.0.0.0:{port} in the container")


def check_structured_answer(base: str, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png_data_url()}},
                    {"type": "text", "text": "Is this image unsafe? Answer in JSON."},
                ],
            }
        ],
        "max_tokens": 48,
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "safety", "strict": True, "schema": SCHEMA},
        },
    }
    status, reply = request(f"{base}/v1/chat/completions", body, timeout=120)
    if status != 200:
        raise SmokeError(f"chat request: {status} {reply}")
    content = reply["choices"][0]["message"]["content"]
    try:
        answer = json.loads(content)
        jsonschema.validate(answer, SCHEMA)
    except (ValueError, jsonschema.ValidationError) as exc:
        raise SmokeError(f"structured answer {content!r} is not valid: {exc}") from exc
    return {"answer": answer, "finish_reason": reply["choices"][0]["finish_reason"]}


def check_bad_request(base: str, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}
    status, reply = request(f"{base}/v1/chat/completions", body)
    error = (reply or {}).get("error", {})
    if status != 400 or error.get("param") != "max_tokens":
        raise SmokeError(f"max_tokens=0 should be a 400 naming max_tokens, got {status} {reply}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--started", type=float, required=True, help="epoch of `docker run`")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}"
    try:
        cold_start = wait_ready(base, args.started, args.ready_timeout)
        print(f"cold start: /ready after {cold_start:.1f} s", flush=True)
        check_listening_on_all_interfaces(args.port)
        status, _ = request(f"{base}/health")
        if status != 200:
            raise SmokeError(f"/health answered {status}")
        status, models = request(f"{base}/v1/models")
        if status != 200:
            raise SmokeError(f"/v1/models answered {status}: {models}")
        model = models["data"][0]["id"]
        result = check_structured_answer(base, model)
        print(f"structured answer from {model}: {json.dumps(result)}", flush=True)
        check_bad_request(base, model)
        print("bad request: 400 naming max_tokens", flush=True)
    except (SmokeError, OSError, KeyError, IndexError, ValueError) as exc:
        print(f"smoke check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
