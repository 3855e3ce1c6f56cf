"""One Serve application per model: `ModelApp` (what a model's application is made of),
the application Serve runs for it, and deploying, deleting and listing those applications.

An application is named after the model's alias and holds one deployment whose name carries
the fingerprint of everything it was built from (registry revision, engine config,
deployment settings, vlmserve version). So what runs is readable from `serve.status()` alone
(Serve keeps no version of imperatively deployed code that we could read back): the same
fingerprint is left alone, another one is redeployed, and an ingress or reconciler that
restarts finds out which applications are current without touching a replica.

Serve's defaults that would defeat scale to zero are set explicitly: `initial_replicas` is
`min_replicas` (from Ray 2.51 an unset one started a replica anyway, ray#59076), and models
are reachable only through handles (`route_prefix=None`), never over Serve's HTTP proxy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.schema import ApplicationStatus

import vlmserve
from vlmserve.cluster.replica import ModelServer
from vlmserve.cluster.settings import DeploymentSettings
from vlmserve.config import EngineConfig

DEPLOYMENT_PREFIX = "vlmserve-model-"
FINGERPRINT_CHARS = 16


@dataclass(frozen=True)
class ModelApp:
    alias: str
    engine_config: EngineConfig
    settings: DeploymentSettings
    revision: int = 1
    # The replica class: a subclass adds methods or behaviour (tests pace answers with one).
    server: type[ModelServer] = ModelServer

    @property
    def fingerprint(self) -> str:
        facts = {
            "vlmserve": vlmserve.__version__,
            "server": f"{self.server.__module__}.{self.server.__qualname__}",
            "revision": self.revision,
            "engine": dataclasses.asdict(self.engine_config),
            "deployment": dataclasses.asdict(self.settings),
        }
        text = json.dumps(facts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]

    @property
    def deployment_name(self) -> str:
        return DEPLOYMENT_PREFIX + self.fingerprint


@dataclass(frozen=True)
class DeployedApp:
    """A model application as Serve reports it."""

    alias: str
    fingerprint: str
    status: str  # Serve's ApplicationStatus: DEPLOYING, RUNNING, DEPLOY_FAILED, ...
    message: str
    replicas: dict[str, int]  # replica state -> count

    @property
    def failed(self) -> bool:
        failed = (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY)
        return self.status in {status.value for status in failed}


def application(model: ModelApp) -> Any:
    """The Serve application (`Deployment.bind(...)`) that serves `model`."""
    s = model.settings
    actor_options: dict[str, Any] = {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus}
    if s.memory_bytes is not None:
        actor_options["memory"] = s.memory_bytes
    if s.resources:
        actor_options["resources"] = dict(s.resources)
    options: dict[str, Any] = {
        "name": model.deployment_name,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "autoscaling_config": {
            "min_replicas": s.min_replicas,
            "initial_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
            "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s,
            "downscale_to_zero_delay_s": s.downscale_to_zero_delay_s,
            "look_back_period_s": s.look_back_period_s,
        },
        "health_check_period_s": s.health_check_period_s,
        "health_check_timeout_s": s.health_check_timeout_s,
        "graceful_shutdown_timeout_s": s.graceful_shutdown_timeout_s,
    }
    if s.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = s.max_replicas_per_node
    deployment = serve.deployment(**options)(model.server)
    return deployment.bind(
        model.alias,
        model.engine_config,
        model.fingerprint,
        # The replica owns its process: as many torch threads as CPUs Ray reserved for it.
        max(1, math.floor(s.num_cpus)),
        # The engine never refuses what Serve lets through: Serve bounds each replica.
        s.max_ongoing_requests,
    )


def deploy(models: Iterable[ModelApp]) -> None:
    """Create or replace these models' applications without waiting for any replica (a
    model with `min_replicas` 0 has none until its first request). Blocking: call it off the
    event loop."""
    targets = [
        serve.RunTarget(application(model), name=model.alias, route_prefix=None) for model in models
    ]
    if targets:
        serve.run_many(targets, wait_for_applications_running=False)


def delete(alias: str) -> None:
    """Delete a model's application (its replicas finish their requests first). Blocking."""
    serve.delete(alias, _blocking=False)


def deployed() -> dict[str, DeployedApp]:
    """Every model application Serve knows, by alias (applications that are not ours, such
    as the ingress, are left out). Blocking: one call to the Serve controller."""
    found = {}
    for name, app in serve.status().applications.items():
        names = list(app.deployments)
        if len(names) != 1 or not names[0].startswith(DEPLOYMENT_PREFIX):
            continue
        deployment = app.deployments[names[0]]
        found[name] = DeployedApp(
            alias=name,
            fingerprint=names[0].removeprefix(DEPLOYMENT_PREFIX),
            status=app.status.value,
            message=app.message or deployment.message,
            replicas={str(state): n for state, n in deployment.replica_states.items()},
        )
    return found


def names() -> set[str]:
    """The names of every Serve application, ours or not. Blocking."""
    return set(serve.status().applications)
