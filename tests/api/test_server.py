"""`vlmserve serve` as the process owner: it, not the engine, sets torch's thread count; its
durable state lives in one data dir."""

from __future__ import annotations

from pathlib import Path

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


def test_the_registry_and_stored_responses_share_one_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VLMSERVE_DATA_DIR", str(tmp_path / "env"))
    assert ServerConfig().state_dir() == tmp_path / "env"
    assert server.registry_path(ServerConfig()) == str(tmp_path / "env" / server.REGISTRY_FILE)
    flag = ServerConfig(data_dir=str(tmp_path / "flag"))  # --data-dir wins over the variable
    assert flag.state_dir() == tmp_path / "flag"
    assert server.registry_path(flag) == str(tmp_path / "flag" / server.REGISTRY_FILE)
    explicit = ServerConfig(data_dir=str(tmp_path / "flag"), registry_path="/r.db")
    assert server.registry_path(explicit) == "/r.db"  # --registry names the file itself
