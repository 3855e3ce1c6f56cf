"""What a report records about where it was made: the machine (CPU model, cores, memory, and
its load averages, since these machines are shared), the software versions and what the server
says about itself."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import httpx

PACKAGES = ("vlmserve", "httpx", "jsonschema", "pillow", "numpy", "matplotlib")


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.platform()}, {_cpu_model()}, {os.cpu_count()} cores, {memory:.0f} GiB"


def load_average() -> str:
    """The 1/5/15-minute load averages: how busy the machine was (others' jobs included)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} cores)"


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"python {sys.version.split()[0]}, " + ", ".join(found)


async def server_facts(client: httpx.AsyncClient) -> str:
    """The server's `/version` answer and `Server` header, as far as it gives them; a
    RuntimeError where no server answers at all (a run would only collect failures)."""
    facts = []
    try:
        response = await client.get("/version")
        if response.status_code == 200:
            facts.append(f"/version {response.text.strip()[:100]}")
        if "server" in response.headers:
            facts.append(f"Server: {response.headers['server']}")
    except httpx.ConnectError as exc:
        reason = str(exc) or type(exc).__name__
        raise RuntimeError(f"cannot reach --base-url {client.base_url}: {reason}") from None
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
