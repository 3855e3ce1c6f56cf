"""`vlmserve serve --ray`'s flags, checked before Ray is touched (these tests run without the
`ray` extra): a bad `--ray-config` is one line naming the flag and the setting as typed, and
a missing extra says how to install it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.cli.test_errors import never_serve, one_line_error
from vlmserve.cli import cluster as cli_cluster
from vlmserve.cluster.settings import ClusterConfig

__all__ = ["never_serve"]  # the fixture: nothing here may start a server


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ('{"bogus": 1}', "--ray-config: unknown keys ['bogus']"),
        ('{"defaults": {"min_replicas": -1}}', "defaults.min_replicas must be a whole number"),
        ('{"models": {"m": {"num_cpu": 1}}}', "models.m.num_cpu: not a deployment setting"),
        ('{"models": {"m": 3}}', "models.m must be a mapping"),
        ('{"overload_status": 500}', "overload_status must be one of (503, 429)"),
    ],
)
def test_a_bad_ray_config_is_one_line_naming_the_setting(
    tiny_qwen2_vl: Path, config: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the check runs once the ray extra is found")
    argv = ["serve", str(tiny_qwen2_vl), "--ray", "--ray-config", config]
    line = one_line_error(argv, capsys)
    assert "--ray-config: " in line and needle in line, line


def test_without_the_ray_extra_the_error_says_how_to_install_it(
    tiny_qwen2_vl: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_cluster.importlib.util, "find_spec", lambda name: None)
    line = one_line_error(["serve", str(tiny_qwen2_vl), "--ray"], capsys)
    assert 'pip install "vlmserve[ray]"' in line


def test_a_ray_config_mapping_sets_the_cluster_and_per_model_settings() -> None:
    config = ClusterConfig.from_mapping(
        {
            "request_timeout": 30,
            "overload_status": 429,
            "defaults": {"num_cpus": 2, "max_replicas": 4},
            "models": {"big": {"num_gpus": 1, "min_replicas": 1}},
        },
        address="10.0.0.5:6379",
    )
    assert config.address == "10.0.0.5:6379" and config.overload_status == 429
    big, other = config.settings_for("big"), config.settings_for("other")
    assert (big.num_gpus, big.min_replicas, big.num_cpus, big.max_replicas) == (1, 1, 2, 4)
    assert (other.num_gpus, other.min_replicas) == (0, 0)
    # A downscale never cuts a request within its time: shutdown outlasts the request timeout.
    assert other.graceful_shutdown_timeout_s == 30 + 15


def test_the_command_line_model_is_stored_and_listed_first(
    tiny_qwen2_vl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--ray` stores the model before Serve starts; the ingress is told to list it first
    (a registry file keeps what earlier runs registered)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs the ray extra")
    from vlmserve.cli import main
    from vlmserve.cluster import launch
    from vlmserve.registry import RegistryStore

    launched = []
    monkeypatch.setattr(launch, "run", launched.append)  # no Ray cluster: the options only
    registry = tmp_path / "registry.db"
    argv = ["serve", str(tiny_qwen2_vl), "--ray", "--served-model-name", "q"]
    assert main([*argv, "--registry", str(registry)]) == 0
    [options] = launched
    assert options.command_line == ("q",)
    store = RegistryStore(registry)
    assert [m.spec.alias for m in store.models()] == ["q"]
    store.close()
