"""The whole vlmserve application (the ingress and the reconciler, as `serve --ray` runs
them) on the test Ray instance: models registered before it starts, deleted with them
afterwards. Shared by the modules that test through the ingress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from tests.cluster.conftest import STARTUP_S, RayInstance, engine_config, model_settings, wait_for
from vlmserve.api.server_config import ServerConfig
from vlmserve.cluster import apps
from vlmserve.cluster.ingress import APP_NAME, Options, application
from vlmserve.cluster.launch import delete_applications
from vlmserve.cluster.settings import ClusterConfig
from vlmserve.config import RegistryConfig
from vlmserve.registry import ModelSpec, RegistryStore

API_KEY = "user-key"
ADMIN_KEY = "admin-key"
USER = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = "/v1/chat/completions"


@dataclass
class Deployed:
    url: str
    options: Options


def options(registry: Path, models: list[ModelSpec], defaults: Path, **fields: Any) -> Options:
    """Options over a new registry at `registry` holding `models`; `fields`: the media
    policy, its resolver and transport, extra routers (Options' fields)."""
    store = RegistryStore(str(registry))
    for spec in models:
        store.replace(spec, None)
    store.close()
    return Options(
        server=ServerConfig(
            api_key=API_KEY,
            admin_api_key=ADMIN_KEY,
            registry_path=str(registry),
            registry=RegistryConfig(load_timeout=STARTUP_S),
        ),
        engine_defaults=engine_config(defaults),
        cluster=ClusterConfig(
            request_timeout=STARTUP_S,
            replica_start_timeout=STARTUP_S,
            reconcile_interval=1.0,
            ingress_max_replicas=1,
            ingress_num_cpus=0.25,
            defaults=model_settings(),
        ),
        registry_path=str(registry),
        **fields,
    )


@contextlib.contextmanager
def deployed(instance: RayInstance, options: Options) -> Iterator[Deployed]:
    serve.run(application(options), name=APP_NAME, route_prefix="/")
    try:
        yield Deployed(instance.http, options)
    finally:
        delete_applications(options.registry_path)
        wait_for(lambda: APP_NAME not in apps.names(), STARTUP_S, "the application deleted")
