"""A real Ray instance for the `ray`-marked tests (`make test-ray`; the default run leaves
them out): one head node on this machine for the whole session, in its own temporary
directory, on free ports, Serve's HTTP proxy on loopback; torn down at the end.

Serve's autoscaling reacts on metrics pushed every 10 s by default; here every 0.2 s, so that
scaling tests take seconds (set before Ray starts: its processes read them at start-up).
Replicas import test helpers (`tests.cluster.paced`), so the repository root is on their
PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("ray") is None:  # the `ray` extra is not installed
    collect_ignore_glob = ["test_*.py"]

ROOT = Path(__file__).resolve().parents[2]
# How long a test waits for a replica to start (engine build and warm-up) or for Serve to act:
# minutes, not seconds, on a 2-core machine that other work loads.
STARTUP_S = 300.0
FAST_AUTOSCALING = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.2",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.2",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RayInstance:
    cluster: Any  # ray.cluster_utils.Cluster
    dashboard: str  # http://host:port, for the state API (actors and their PIDs)
    http: str  # Serve's HTTP proxy


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[RayInstance]:
    os.environ.update(FAST_AUTOSCALING)
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    # Sessions, sockets and the "current cluster" file of this instance only: another Ray
    # on the machine (someone else's tests) is neither found nor disturbed.
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="vr-", dir="/tmp")
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,  # logical: replicas ask for fractions of a CPU
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": free_port(),
        },
    )
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        instance = RayInstance(
            cluster, f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{free_port()}"
        )
        start_serve(instance)
        yield instance
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def start_serve(instance: RayInstance) -> None:
    """Serve on the instance, its HTTP proxy on `instance.http` (again after a shutdown: once
    the old controller and proxy are gone, or the old controller's shutdown, which retries,
    kills the new proxy of the same name)."""
    from ray import serve
    from ray.util.state import list_actors

    def serve_actors() -> list[Any]:
        filters: list[Any] = [("state", "!=", "DEAD")]
        actors = list_actors(address=instance.dashboard, filters=filters, limit=1000)
        return [a for a in actors if a.class_name in ("ServeController", "ProxyActor")]

    wait_for(lambda: not serve_actors(), STARTUP_S, "the last Serve instance gone")
    port = int(instance.http.rsplit(":", 1)[1])
    # One proxy (on the head): nodes added on this machine would fight for its port.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """Poll until `condition()` is truthy (returned), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)


async def async_wait_for(
    condition: Callable[[], Any], timeout: float, what: str, every: float = 0.25
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(every)


# -- model applications -------------------------------------------------------------------------
def engine_config(model: Path, **overrides: Any) -> Any:
    from vlmserve.config import EngineConfig

    values: dict[str, Any] = {
        "model": str(model),
        "max_model_len": 1024,
        "max_num_seqs": 8,
        "kv_cache_memory_bytes": 32 * 1024 * 1024,
    }
    return EngineConfig(**{**values, **overrides})


def model_settings(**overrides: Any) -> Any:
    """Small replicas that scale within seconds (the cluster pushes metrics every 0.2 s)."""
    from vlmserve.cluster.settings import DeploymentSettings

    values: dict[str, Any] = {
        "num_cpus": 0.5,
        "max_ongoing_requests": 8,
        "max_queued_requests": 32,
        "min_replicas": 0,
        "max_replicas": 1,
        "target_ongoing_requests": 2.0,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 2.0,
        "downscale_to_zero_delay_s": 4.0,
        "look_back_period_s": 1.0,
        "health_check_period_s": 1.0,
        "health_check_timeout_s": 10.0,
        "graceful_shutdown_timeout_s": 90.0,
    }
    return DeploymentSettings(**{**values, **overrides})


@dataclass
class Replica:
    pid: int
    node_id: str
    state: str


def replicas(instance: RayInstance, app: Any, alive_only: bool = True) -> list[Replica]:
    """The replica actors of a model application (found by the actor class Serve names
    after the application and deployment), with their process ids."""
    from ray.util.state import list_actors

    filters: list[Any] = [("class_name", "=", f"ServeReplica:{app.alias}:{app.deployment_name}")]
    if alive_only:
        filters.append(("state", "=", "ALIVE"))
    actors = list_actors(address=instance.dashboard, filters=filters, limit=1000)
    # An actor Ray has not placed yet has no process: it is not a replica to count or kill.
    return [
        Replica(a.pid, a.node_id, a.state)
        for a in actors
        if a.pid is not None and a.node_id is not None
    ]


@pytest.fixture
def deploy(ray_instance: RayInstance) -> Iterator[Callable[..., Any]]:
    """`deploy(alias, model, server=..., **settings)` -> the deployed `ModelApp`; every
    application a test deployed is deleted after it, and gone before the next test."""
    from vlmserve.cluster import apps

    made: list[str] = []

    def run(alias: str, model: Path, engine: dict[str, Any] | None = None, **kw: Any) -> Any:
        server = kw.pop("server", None)
        extra = {"server": server} if server is not None else {}
        app = apps.ModelApp(
            alias, engine_config(model, **(engine or {})), model_settings(**kw), **extra
        )
        apps.deploy([app])
        made.append(alias)
        return app

    yield run
    for alias in made:
        apps.delete(alias)
    wait_for(lambda: not set(made) & set(apps.deployed()), STARTUP_S, "test applications deleted")


async def generate_directly(alias: str, request_id: str, max_tokens: int = 4) -> Any:
    """One generation through the application's own handle: the `Accepted` of the replica
    that served it (its pid and node), once the answer finished."""
    from ray import serve
    from ray.serve.handle import DeploymentResponseGenerator

    from vlmserve.cluster.replica import Accepted
    from vlmserve.types import Prompt, RequestOutput, SamplingParams

    handle = serve.get_app_handle(alias).options(stream=True)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    stream = handle.generate.remote(Prompt(text="Hi"), params, request_id)
    assert isinstance(stream, DeploymentResponseGenerator)  # a streaming handle's answer
    items = [item async for item in stream]
    assert isinstance(items[0], Accepted) and isinstance(items[-1], RequestOutput)
    assert items[-1].finished, items[-1]
    return items[0]
