"""What a report records about where it was made: the machine, the software versions and
what the server says about itself."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import httpx

PACKAGES = ("vlmserve", "httpx", "jsonschema", "pillow", "numpy", "matplotlib")


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    processor = platform.processor() or platform.machine()
    return f"{platform.platform()}, {processor}, {os.cpu_count()} cores, {memory:.0f} GiB"


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"python {sys.version.split()[0]}, " + ", ".join(found)


async def server_facts(client: httpx.AsyncClient) -> str:
    """The server's `/version` answer and `Server` header, as far as it gives them."""
    facts = []
    try:
        response = await client.get("/version")
        if response.status_code == 200:
            facts.append(f"/version {response.text.strip()[:100]}")
        if "server" in response.headers:
            facts.append(f"Server: {response.headers['server']}")
    except httpx.HTTPError as exc:
        facts.append(f"/version unreachable ({exc!r})")
    return ", ".join(facts) or "no /version"


def report_meta(model: str, seed: int, server: str) -> dict[str, Any]:
    return {
        "machine": machine(),
        "server": server,
        "model": model,
        "versions": versions(),
        "seed": seed,
    }
