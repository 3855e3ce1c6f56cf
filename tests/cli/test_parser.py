"""`vlmserve` flags: help and defaults shown for every flag, list flags that cannot swallow
MODEL, config files, and the mapping to config objects."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import pytest

import vlmserve
from vlmserve.cli.configs import build_configs, media_config
from vlmserve.cli.help import CommaList, HelpFormatter
from vlmserve.cli.main import _parsers, parse_args
from vlmserve.config import MediaFetchTimeout


def commands() -> dict[str, argparse.ArgumentParser]:
    return _parsers()[1]


def test_flags_map_to_configs() -> None:
    args = parse_args(
        [
            "serve",
            "/m",
            "--port",
            "9000",
            "--api-key",
            "k",
            "--limit-mm-per-prompt",
            '{"image": 4}',
            "--max-waiting",
            "7",
            "--allowed-media-domains",
            "*.example.com",
            "--media-fetch-timeout",
            "3",
            "--media-io-kwargs",
            '{"video": {"num_frames": 8}, "image": {"max_pixels": 1000000}}',
            "--dtype",
            "bfloat16",
            "--quantization",
            "int8",
            "--load-format",
            "dummy",
            "--no-enable-prefix-caching",
            "--max-num-batched-tokens",
            "512",
            "--cpu-threads",
            "3",
            "--gpu-memory-utilization",
            "0.5",
            "--kv-cache-memory-bytes",
            "64MiB",
            "--media-max-bytes-per-item",
            "1M",
            "--data-dir",
            "/var/lib/vlm",
        ]
    )
    engine, server, media = build_configs(args, args.model, "name", None)
    assert engine.model == "/m" and engine.limit_mm_per_prompt == {"image": 4}
    assert engine.mm_limits == {"image": 4, "video": 2}  # unnamed modalities keep defaults
    assert (engine.dtype, engine.load_format) == ("bfloat16", "dummy")
    assert engine.quantization == "int8"
    assert not engine.enable_prefix_caching and engine.enable_chunked_prefill
    assert engine.max_num_batched_tokens == 512 and server.cpu_threads == 3
    assert engine.gpu_memory_utilization == 0.5
    assert engine.kv_cache_memory_bytes == 64 * 2**20
    assert (server.port, server.api_key, server.max_waiting) == (9000, "k", 7)
    assert server.max_request_body_bytes == 32 * 2**20  # the "32MiB" default, parsed
    assert server.data_dir == "/var/lib/vlm"
    assert media.allowed_media_domains == ("*.example.com",)
    assert media.media_fetch_timeout == MediaFetchTimeout(3, 3, 3)
    assert (media.video_max_frames, media.max_image_pixels) == (8, 1_000_000)
    assert media.max_bytes_per_item == 2**20
    with pytest.raises(ValueError, match="media-io-kwargs"):
        media_config(parse_args(["serve", "--media-io-kwargs", '{"audio": {}}']))


def test_media_work_limits_map_to_media_config() -> None:
    limits = '{"video": {"max_decoded_frames": 500, "decode_timeout": 2.5}}'
    media = media_config(parse_args(["serve", "--media-io-kwargs", limits]))
    assert (media.video_max_decoded_frames, media.video_decode_timeout) == (500, 2.5)
    per_request = parse_args(["serve", "--media-max-fetches-per-request", "2"])
    assert media_config(per_request).max_fetches_per_request == 2


def test_media_fetch_timeout_takes_three_numbers_as_docs_media_says() -> None:
    args = parse_args(["serve", "--media-fetch-timeout", "5,10,30"])
    assert args.media_fetch_timeout == MediaFetchTimeout(5, 10, 30)
    assert parse_args(["serve"]).media_fetch_timeout == MediaFetchTimeout()


@pytest.mark.parametrize("command", ["serve", "make-tiny-model"])
def test_every_flag_has_help_and_shows_its_default(command: str) -> None:
    parser = commands()[command]
    formatter = HelpFormatter(prog="vlmserve")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._expand_help(action)
        assert action.help, f"{action.option_strings or action.dest} has no help"
        if action.option_strings or action.nargs == "?":
            assert "default" in text, f"{action.option_strings or action.dest}: {text!r}"


def test_help_renders_for_people() -> None:
    serve_help = commands()["serve"].format_help()
    assert "(default: 80,443)" in serve_help  # a list as typed, not "[80, 443]"
    assert "(default: 5,10,30)" in serve_help
    assert "(default: 32MiB)" in serve_help
    assert "None" not in serve_help
    top = _parsers()[0].format_help()
    assert "OpenAI-compatible" in top and "docs/quickstart.md" in top


def test_version_and_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"vlmserve {vlmserve.__version__}"
    assert parse_args(["serve"]).log_level == "info"
    assert parse_args(["serve", "--log-level", "debug"]).log_level == "debug"
    assert parse_args(["make-tiny-model", "/x", "--log-level", "warning"]).log_level == "warning"


def test_no_list_flag_can_consume_model() -> None:
    serve = commands()["serve"]
    greedy = [a.option_strings for a in serve._actions if a.nargs in ("*", "+")]
    assert greedy == []  # one argument per flag use, by construction
    lists = [a for a in serve._actions if isinstance(a, CommaList)]
    assert {a.dest for a in lists} == {"allowed_media_domains", "allowed_media_ports"}
    for action in lists:
        value = "8080" if action.dest == "allowed_media_ports" else "img.example.com"
        for argv in (
            ["serve", action.option_strings[0], value, "/models/X"],
            ["serve", "/models/X", action.option_strings[0], value],
        ):
            args = parse_args(argv)
            assert args.model == "/models/X", argv
            assert [str(v) for v in getattr(args, action.dest)] == [value]


def test_list_flags_take_commas_and_repeats() -> None:
    args = parse_args(
        [
            "serve",
            "--allowed-media-domains",
            "a.example.com,*.b.example.com",
            "--allowed-media-domains",
            "c.example.com",
            "--allowed-media-ports",
            "8080",
        ]
    )
    assert args.allowed_media_domains == ["a.example.com", "*.b.example.com", "c.example.com"]
    assert args.allowed_media_ports == [8080]  # replaces the default, not added to it
    assert parse_args(["serve"]).allowed_media_ports == [80, 443]


def test_space_separated_lists_get_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parse_args(["serve", "--allowed-media-domains", "a.com", "b.com", "/models/X"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: /models/X" in err and "join the values with commas" in err
    with pytest.raises(SystemExit):
        parse_args(["serve", "--allowed-media-ports", "80,http"])
    assert "invalid value 'http'" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_and_flag_precedence(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"serve{suffix}"
    if suffix == ".yaml":
        path.write_text(
            "port: 9001\napi-key: abc\nlimit_mm_per_prompt: {image: 2}\n"
            "allowed_media_ports: [80, 8080]\nmedia_fetch_timeout: 10\n"
            "allowed-media-domains: a.example.com,b.example.com\nkv-cache-memory-bytes: 1GiB\n"
        )
    else:
        path.write_text(
            'port = 9001\napi-key = "abc"\nlimit_mm_per_prompt = {image = 2}\n'
            "allowed_media_ports = [80, 8080]\nmedia_fetch_timeout = 10\n"
            'allowed-media-domains = ["a.example.com", "b.example.com"]\n'
            "kv-cache-memory-bytes = 1073741824\n"
        )
    args = parse_args(["serve", "--config", str(path), "--port", "9002"])
    assert (args.port, args.api_key, args.limit_mm_per_prompt) == (9002, "abc", {"image": 2})
    assert args.allowed_media_ports == [80, 8080]
    assert args.media_fetch_timeout == MediaFetchTimeout(5, 10, 10)
    assert args.allowed_media_domains == ["a.example.com", "b.example.com"]
    assert args.kv_cache_memory_bytes == 2**30
    # A list flag on the command line replaces the file's list.
    args = parse_args(["serve", "--config", str(path), "--allowed-media-ports", "9000"])
    assert args.allowed_media_ports == [9000]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus: 1\n", "unknown keys"),
        ("port: eighty\n", "config key 'port'"),
        ("max_waiting: true\n", "must be int"),
        ("- 1\n", "mapping"),
        ("allowed_media_ports: 80\n", "must be a list"),
        ("allowed_media_ports: [http]\n", "invalid value 'http'"),
    ],
)
def test_bad_config_files_stop_with_a_message(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit):
        parse_args(["serve", "--config", str(path)])
    assert needle in capsys.readouterr().err


def test_a_second_list_value_taken_as_model_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for argv in (
        ["serve", "--allowed-media-ports", "80", "8080"],
        ["serve", "--allowed-media-domains", "a.example.com", "b.example.com", "--port", "0"],
    ):
        with pytest.raises(SystemExit) as stop:
            parse_args(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"MODEL '{argv[3]}' is no model folder; it follows {argv[1]} {argv[2]}" in err
        assert "join the values with commas" in err
    folder = tmp_path / "mymodel"
    folder.mkdir()
    with contextlib.chdir(tmp_path):  # a local folder named like a value stays the model
        assert parse_args(["serve", "--allowed-media-ports", "80", "mymodel"]).model == "mymodel"
    assert parse_args(["serve", "--allowed-media-ports", "80", "Qwen/X"]).model == "Qwen/X"
