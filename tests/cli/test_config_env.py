"""Every `vlmserve serve` flag also from a `VLMSERVE_*` environment variable, parsed as on
the command line (command line > environment > --config file > default), and
`--print-config` showing the effective settings with the keys hidden."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlmserve.cli.config_env import env_name
from vlmserve.cli.main import _parsers, main, parse_args
from vlmserve.config import MediaFetchTimeout


def serve_error(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> str:
    with pytest.raises(SystemExit):
        parse_args(argv, environ)
    return capsys.readouterr().err


def test_every_flag_has_a_variable() -> None:
    serve = _parsers()[1]["serve"]
    names = {a.dest: env_name(a) for a in serve._actions}
    assert names["max_model_len"] == "VLMSERVE_MAX_MODEL_LEN"
    assert names["memory_budget_bytes"] == "VLMSERVE_MEMORY_BUDGET"  # the flag's name, not dest
    assert names["model"] == "VLMSERVE_MODEL" and names["config"] == "VLMSERVE_CONFIG"
    assert len(set(names.values())) == len(names)


def test_variables_are_parsed_as_flags() -> None:
    environ = {
        "VLMSERVE_MODEL": "/models/x",
        "VLMSERVE_PORT": "9001",
        "VLMSERVE_API_KEY": "s3cret",
        "VLMSERVE_LOG_FORMAT": "json",
        "VLMSERVE_LOG_REQUESTS": "yes",
        "VLMSERVE_ENABLE_PREFIX_CACHING": "off",
        "VLMSERVE_ALLOWED_MEDIA_PORTS": "80,8080",
        "VLMSERVE_MEDIA_FETCH_TIMEOUT": "5,10,20",
        "VLMSERVE_KV_CACHE_MEMORY_BYTES": "1GiB",
        "VLMSERVE_LIMIT_MM_PER_PROMPT": '{"image": 3}',
        "VLMSERVE_SHUTDOWN_TIMEOUT": "45",
        # Not flags, read elsewhere; and what Kubernetes injects for a Service: ignored.
        "VLMSERVE_DATA_DIR": "/data",
        "VLMSERVE_NATIVE_KERNELS": "0",
        "VLMSERVE_SERVICE_HOST": "10.0.0.1",
        "VLMSERVE_PORT_8000_TCP_ADDR": "10.0.0.1",
        "OTHER": "x",
    }
    args = parse_args(["serve"], environ)
    assert (args.model, args.port, args.api_key, args.log_format) == (
        "/models/x",
        9001,
        "s3cret",
        "json",
    )
    assert args.log_requests is True and args.enable_prefix_caching is False
    assert args.allowed_media_ports == [80, 8080]
    assert args.media_fetch_timeout == MediaFetchTimeout(5, 10, 20)
    assert args.kv_cache_memory_bytes == 2**30 and args.limit_mm_per_prompt == {"image": 3}
    assert args.shutdown_timeout == 45.0


def test_command_line_beats_environment_beats_file(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("port: 9000\nmax_waiting: 5\nhost: 0.0.0.0\n")
    environ = {"VLMSERVE_CONFIG": str(path), "VLMSERVE_PORT": "9001", "VLMSERVE_MAX_WAITING": "6"}
    args = parse_args(["serve", "--max-waiting", "7"], environ)
    assert (args.host, args.port, args.max_waiting) == ("0.0.0.0", 9001, 7)
    # --config on the command line beats VLMSERVE_CONFIG.
    other = tmp_path / "other.toml"
    other.write_text('host = "::1"\n')
    args = parse_args(["serve", "--config", str(other)], environ)
    assert (args.host, args.port) == ("::1", 9001)


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"VLMSERVE_MAX_MODLE_LEN": "4096"}, "VLMSERVE_MAX_MODLE_LEN names no flag"),
        ({"VLMSERVE_PORT": "eighty"}, "VLMSERVE_PORT: invalid int value: 'eighty'"),
        ({"VLMSERVE_PORT": "tcp://10.0.0.1:8000"}, "enableServiceLinks: false"),
        ({"VLMSERVE_LOG_FORMAT": "xml"}, "VLMSERVE_LOG_FORMAT: invalid choice 'xml'"),
        ({"VLMSERVE_LOG_REQUESTS": "maybe"}, "VLMSERVE_LOG_REQUESTS: give true or false"),
        ({"VLMSERVE_ALLOWED_MEDIA_PORTS": "80,http"}, "invalid value 'http'"),
        ({"VLMSERVE_MAX_REQUEST_BODY_BYTES": "lots"}, "VLMSERVE_MAX_REQUEST_BODY_BYTES"),
        ({"VLMSERVE_CONFIG": "/nonexistent/serve.yaml"}, "/nonexistent/serve.yaml"),
    ],
)
def test_bad_variables_stop_with_a_message_naming_them(
    environ: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert needle in serve_error(["serve"], environ, capsys)


def test_other_commands_ignore_serve_variables() -> None:
    args = parse_args(["make-tiny-model", "/tmp/x"], {"VLMSERVE_PORT": "eighty"})
    assert args.command == "make-tiny-model"


def test_print_config_shows_the_effective_settings_keys_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("max_waiting: 5\nadmin_api_key: file-secret\n")
    monkeypatch.setenv("VLMSERVE_API_KEY", "env-secret")
    monkeypatch.setenv("VLMSERVE_PORT", "9001")
    argv = ["serve", "/models/x", "--config", str(path), "--media-fetch-timeout", "3,4,5"]
    assert main([*argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "file-secret" not in text and "env-secret" not in text
    printed = yaml.safe_load(text)
    assert printed["api_key"] == printed["admin_api_key"] == "<hidden>"
    assert (printed["model"], printed["port"], printed["max_waiting"]) == ("/models/x", 9001, 5)
    assert printed["api_keys_file"] is None and printed["media_fetch_timeout"] == "3,4,5"
    # The output is a config file: read back, it gives the same settings (keys aside).
    printed.pop("api_key"), printed.pop("admin_api_key")
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump(printed))
    monkeypatch.delenv("VLMSERVE_API_KEY"), monkeypatch.delenv("VLMSERVE_PORT")
    reread = vars(parse_args(["serve", "--config", str(again)]))
    original = vars(parse_args(argv, {"VLMSERVE_PORT": "9001"}))
    for key in printed:
        assert reread[key] == original[key], key
