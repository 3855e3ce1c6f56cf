"""`vlmserve serve` flags, config files and the default tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmserve.cli import _configs, _media_config, default_tiny_model, parse_args


def test_flags_map_to_configs(tmp_path: Path) -> None:
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
            '{"video": {"num_frames": 8}}',
            "--dtype",
            "bfloat16",
            "--load-format",
            "dummy",
            "--no-enable-prefix-caching",
            "--max-num-batched-tokens",
            "512",
            "--cpu-threads",
            "3",
        ]
    )
    engine, server, media = _configs(args, args.model, "name", None)
    assert engine.model == "/m" and engine.limit_mm_per_prompt == {"image": 4}
    assert engine.mm_limits == {"image": 4, "video": 2}  # unnamed modalities keep defaults
    assert (engine.dtype, engine.load_format) == ("bfloat16", "dummy")
    assert not engine.enable_prefix_caching and engine.enable_chunked_prefill
    assert engine.max_num_batched_tokens == 512 and server.cpu_threads == 3
    assert (server.port, server.api_key, server.max_waiting) == (9000, "k", 7)
    assert media.allowed_media_domains == ("*.example.com",)
    assert media.media_fetch_timeout.total == 3 and media.video_max_frames == 8
    with pytest.raises(ValueError, match="media-io-kwargs"):
        _media_config(parse_args(["serve", "--media-io-kwargs", '{"audio": {}}']))


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_and_flag_precedence(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"serve{suffix}"
    if suffix == ".yaml":
        path.write_text(
            "port: 9001\napi-key: abc\nlimit_mm_per_prompt: {image: 2}\n"
            "allowed_media_ports: [80, 8080]\nmedia_fetch_timeout: 10\n"
        )
    else:
        path.write_text(
            'port = 9001\napi-key = "abc"\nlimit_mm_per_prompt = {image = 2}\n'
            "allowed_media_ports = [80, 8080]\nmedia_fetch_timeout = 10\n"
        )
    args = parse_args(["serve", "--config", str(path), "--port", "9002"])
    assert (args.port, args.api_key, args.limit_mm_per_prompt) == (9002, "abc", {"image": 2})
    assert args.allowed_media_ports == [80, 8080] and args.media_fetch_timeout == 10.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus: 1\n", "unknown keys"),
        ("port: eighty\n", "config key 'port'"),
        ("max_waiting: true\n", "must be int"),
        ("- 1\n", "mapping"),
        ("allowed_media_ports: 80\n", "must be a list"),
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


def test_default_tiny_model_is_generated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMSERVE_CACHE", str(tmp_path))
    first = default_tiny_model()
    assert first == tmp_path / "tiny-qwen2_vl" and (first / "config.json").is_file()
    stamp = (first / "config.json").stat().st_mtime_ns
    assert default_tiny_model() == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-qwen2_vl"]  # no leftovers
