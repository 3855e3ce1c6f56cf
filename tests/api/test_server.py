"""`vlmserve serve` as the process owner: it, not the engine, sets torch's thread count."""

from __future__ import annotations

import pytest
import torch

from vlmserve.api import server
from vlmserve.api.server_config import ServerConfig
from vlmserve.config import EngineConfig, MediaConfig


def test_run_server_sets_the_thread_count_before_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []

    async def serve(*_: object) -> None:
        seen.append(torch.get_num_threads())

    monkeypatch.setattr(server, "serve", serve)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        server.run_server(EngineConfig("unused"), ServerConfig(cpu_threads=wanted), MediaConfig())
    finally:
        torch.set_num_threads(before)
    assert seen == [wanted]
    with pytest.raises(ValueError, match="cpu_threads must be at least 1"):
        ServerConfig(cpu_threads=0)
