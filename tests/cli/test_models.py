"""`vlmserve models`: the admin API from the command line, against a real HTTP server (a
fake engine host behind it: this is about the commands, not the engines)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from tests.api.conftest import offline_resolver
from tests.registry.fakes import FakeHost
from vlmserve.api.app import create_app
from vlmserve.api.server_config import ServerConfig
from vlmserve.cli import main
from vlmserve.registry import ModelRegistry


@pytest.fixture
def base_url() -> Iterator[str]:
    models = ModelRegistry(host=FakeHost(broken={"broken"}))
    app = create_app(models, ServerConfig(admin_api_key="adm"), media_resolver=offline_resolver)
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)
    asyncio.run(models.close(drain_timeout=1))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["models", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_register_list_load_unload_remove(
    base_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLMSERVE_ADMIN_KEY", "adm")
    template = tmp_path / "template.j2"
    template.write_text("{{ messages }}")
    url = ["--base-url", base_url]
    status, out, _ = run(
        capsys, "register", "qwen", "/models/qwen", *url, "--max-model-len", "4096",
        "--keep-alive", "10m", "--chat-template", str(template), "--limit-mm-per-prompt",
        '{"image": 2}',
    )  # fmt: skip
    assert status == 0 and out == "qwen: registered (revision 1)\n"
    status, out, _ = run(capsys, "list", *url, "--json")
    [card] = json.loads(out)["data"]
    assert (card["id"], card["state"], card["max_model_len"]) == ("qwen", "registered", 4096)
    status, out, _ = run(capsys, "load", "qwen", "--wait", *url)
    assert status == 0 and out == "qwen: ready (revision 1), 100 MiB\n"
    status, out, _ = run(capsys, "list", *url)
    header, row = out.splitlines()
    assert header.split() == [
        "MODEL",
        "STATE",
        "IN",
        "FLIGHT",
        "MEMORY",
        "LOAD",
        "UNLOADS",
        "IN",
        "LAST",
        "ERROR",
    ]
    assert row.split()[:4] == ["qwen", "ready", "0", "100"]
    assert re.search(r"  (59\d|600) s$", row), row  # unloads in ~10 min
    assert run(capsys, "unload", "qwen", *url)[1] == "qwen: registered (revision 1), 100 MiB\n"
    assert run(capsys, "remove", "qwen", *url)[1] == "qwen: removed\n"
    assert run(capsys, "list", *url)[1].splitlines()[1:] == []


def test_refusals_are_one_line_with_status_1(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--base-url", base_url]
    status, _, err = run(capsys, "register", "x", "/m", *url)
    assert (
        status == 1
        and err
        == "vlmserve models: error: missing API key: send "
        "'Authorization: Bearer <key>' (HTTP 401)\n"
    )
    status, _, err = run(capsys, "load", "nope", *url, "--admin-key", "adm")
    assert status == 1 and "the model 'nope' does not exist" in err and "(HTTP 404)" in err
    status, _, err = run(capsys, "register", "x", "/m", "--max-model-len", "0", *url,
                         "--admin-key", "adm")  # fmt: skip
    assert status == 1 and "(HTTP 400)" in err  # named as typed, not as the API's field
    assert "error: --max-model-len: Input should be greater than or equal to 1" in err
    media = ["--media", '{"max_image_pixels": 1000}', "--json"]
    status, out, _ = run(capsys, "register", "m", "/m", *media, *url, "--admin-key", "adm")
    assert status == 0 and json.loads(out)["registration"]["media"] == {"max_image_pixels": 1000}
    wider = ["--media", '{"allow_private_media_addresses": true}']
    status, _, err = run(capsys, "register", "w", "/m", *wider, *url, "--admin-key", "adm")
    assert status == 1 and "--media 'allow_private_media_addresses'" in err and "(HTTP 400)" in err
    status, _, err = run(capsys, "register", "k", "/m", "--keep-alive", "soon", *url,
                         "--admin-key", "adm")  # fmt: skip
    assert "error: --keep-alive: 'soon' is not a keep-alive: give seconds" in err
    status, _, err = run(capsys, "register", "t", " ", *url, "--admin-key", "adm")
    assert status == 1 and "error: MODEL: must name a model folder or hub id" in err
    run(capsys, "register", "broken", "/m", *url, "--admin-key", "adm")
    status, _, err = run(capsys, "load", "broken", "--wait", *url, "--admin-key", "adm")
    assert status == 1 and "its last load failed" in err and "(HTTP 503)" in err
    status, _, err = run(capsys, "list", "--base-url", "http://127.0.0.1:9")
    assert status == 1 and err.startswith("vlmserve models: error: cannot reach ")
    assert run(capsys, "register", "x", "/m", "--chat-template", "/nope.j2", *url)[0] == 2
