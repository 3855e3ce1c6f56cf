"""`vlmserve serve --ray`: its flags, its start, and `build`, the import path a declarative
Serve config (KubeRay's `serveConfigV2`) names to run the same application from the same
flags. Ray is imported only once `--ray` is given (it is an optional extra)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
from typing import Any

from vlmserve.cli.help import json_object
from vlmserve.safety import cli as safety_cli

RAY_MISSING = 'serving on Ray needs the ray extra: pip install "vlmserve[ray]"'


def add_ray_flags(group: Any) -> None:
    group.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve: every model its own Serve application, scaled by Serve "
        "down to no replica when idle (docs/ray.md)",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="a running Ray cluster, e.g. 10.0.0.5:6379 (default: a Ray instance of its own "
        "on this machine, stopped with this command)",
    )
    group.add_argument(
        "--ray-config",
        type=json_object,
        metavar="JSON",
        default={},
        help="Ray settings as JSON (in --config: a mapping): request_timeout, "
        "overload_status, ingress_*, reconcile_interval, 'defaults' (every model's replicas: "
        "num_cpus, num_gpus, min_replicas, max_replicas, ...) and 'models' (per alias); "
        "docs/ray.md lists them",
    )


def cluster_options(args: argparse.Namespace, engine: Any, server: Any, media: Any) -> Any:
    """The vlmserve application's options from the parsed `serve` flags."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError(RAY_MISSING)
    from vlmserve.api.server import registry_path
    from vlmserve.cluster.ingress import Options
    from vlmserve.cluster.settings import ClusterConfig

    try:
        cluster = ClusterConfig.from_mapping(args.ray_config, address=args.ray_address)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--ray-config: {exc}") from None
    safety_cli.serve_routers(args)  # a bad --moderation-policy stops the start here
    # Each ingress replica builds its own routes from the same flags.
    routers = functools.partial(safety_cli.serve_routers, args)
    return Options(server, media, engine, cluster, registry_path(server), extra_routers=routers)


def run_on_ray(args: argparse.Namespace, engine: Any, server: Any, media: Any) -> int:
    from vlmserve.api.server import startup_spec

    # Options first: without the ray extra they end in the one-line install hint, before
    # anything imports ray.
    options = cluster_options(args, engine, server, media)
    from vlmserve.cluster.launch import run

    spec = startup_spec(engine, server)
    register(options.registry_path, spec)
    run(dataclasses.replace(options, command_line=(spec.alias,)))
    return 0


def build(args: dict[str, Any]) -> Any:
    """The vlmserve Serve application, for a declarative config: `import_path:
    vlmserve.cli.cluster:build` with `args: {argv: [...]}`, the `vlmserve serve` flags
    (e.g. `["--config", "/etc/vlmserve/serve.yaml"]`). No model is registered from a
    MODEL argument here: models come from the registry."""
    from vlmserve.api.server import startup_spec
    from vlmserve.cli.configs import build_configs
    from vlmserve.cli.main import parse_args
    from vlmserve.cluster.ingress import application

    argv = args.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("args.argv must be a list of `vlmserve serve` flags")
    parsed = parse_args(["serve", "--ray", *argv])
    # Without MODEL the engine flags are only the defaults of every registration.
    model = parsed.model or "registered-models-only"
    engine, server, media = build_configs(parsed, model, parsed.served_model_name, None)
    options = cluster_options(parsed, engine, server, media)
    if parsed.model is not None:
        spec = startup_spec(engine, server)
        register(options.registry_path, spec)
        options = dataclasses.replace(options, command_line=(spec.alias,))
    return application(options)


def register(path: str, spec: Any) -> None:
    """Store the command line's model (as `vlmserve models register` would)."""
    from vlmserve.registry import RegistryStore

    store = RegistryStore(path)
    try:
        store.replace(spec, None)
    finally:
        store.close()
