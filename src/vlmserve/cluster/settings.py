"""How vlmserve runs on Ray Serve, as plain data: `DeploymentSettings` (one model's Serve
application: resources per replica, concurrency, queue, autoscaling, health checks, shutdown)
and `ClusterConfig` (the ingress, timeouts, and the settings every model starts from).

Every default is ours and explicit (docs/ray.md says why each differs from Ray's): Ray's own
defaults suit short stateless calls (5 ongoing requests, an unbounded queue, 20 s to finish a
request on downscale, 30 s before scaling up), not token streams that run for minutes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OVERLOAD_STATUSES = (503, 429)
# A replica that is shutting down (downscale, update) gets this long beyond the longest
# allowed request before Serve kills it: time to send the last event and close.
SHUTDOWN_MARGIN_S = 15.0


@dataclass(frozen=True)
class DeploymentSettings:
    """One model's Serve application. Field names are the settings' names in the `ray`
    section of the config file (docs/ray.md)."""

    # Resources of one replica: what Ray reserves on a node for it.
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)  # custom node resources
    max_replicas_per_node: int | None = None
    # Requests: running on one replica at once (the engine batches them), and waiting in
    # each ingress replica's queue for a replica (beyond it: 503 or 429 with Retry-After).
    max_ongoing_requests: int = 32
    max_queued_requests: int = 128
    # Autoscaling on ongoing requests per replica. min_replicas 0: no replica while idle.
    min_replicas: int = 0
    max_replicas: int = 1
    target_ongoing_requests: float = 16.0
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 60.0
    downscale_to_zero_delay_s: float = 300.0
    look_back_period_s: float = 15.0
    # Health: Serve asks every period; the replica answers from a flag its engine loop keeps.
    health_check_period_s: float = 5.0
    health_check_timeout_s: float = 30.0
    # None: the cluster's longest allowed request + SHUTDOWN_MARGIN_S (never less).
    graceful_shutdown_timeout_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_cpus", "target_ongoing_requests", "look_back_period_s"):
            _number(self, name, minimum=0, inclusive=False)
        for name in ("health_check_period_s", "health_check_timeout_s"):
            _number(self, name, minimum=0, inclusive=False)
        for name in ("num_gpus", "upscale_delay_s", "downscale_delay_s"):
            _number(self, name, minimum=0)
        _number(self, "downscale_to_zero_delay_s", minimum=0)
        for name in ("max_ongoing_requests", "max_queued_requests", "max_replicas"):
            _count(self, name, minimum=1)
        _count(self, "min_replicas", minimum=0)
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas must be >= min_replicas ({self.min_replicas}), "
                f"got {self.max_replicas}"
            )
        for name in ("memory_bytes", "max_replicas_per_node"):
            if getattr(self, name) is not None:
                _count(self, name, minimum=1)
        for key, amount in self.resources.items():
            if not (isinstance(amount, int | float) and math.isfinite(amount) and amount > 0):
                raise ValueError(f"resources.{key} must be a number > 0, got {amount!r}")
        if self.graceful_shutdown_timeout_s is not None:
            _number(self, "graceful_shutdown_timeout_s", minimum=0, inclusive=False)

    def with_overrides(self, overrides: Mapping[str, Any]) -> DeploymentSettings:
        """These settings with some replaced (a model's own `ray.models.ALIAS` section)."""
        known = {f.name for f in dataclasses.fields(self)}
        for name in overrides:
            if name not in known:
                raise ValueError(f"{name}: not a deployment setting; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class ClusterConfig:
    """`vlmserve serve --ray`: where Ray is, the ingress, and the model defaults."""

    address: str | None = None  # --ray-address; None: a Ray instance on this machine
    # Longest a request may run; every model's graceful shutdown waits at least this long,
    # so a downscale or an update never cuts a request that is within its time.
    request_timeout: float = 600.0
    overload_status: int = 503  # a full queue: 503 or 429, with Retry-After
    # Longest a model's load waits for its first replica to start (then the registry marks
    # it failed and backs off); requests stop waiting at load_timeout.
    replica_start_timeout: float = 900.0
    # The ingress (our FastAPI app as a Serve deployment; Serve's proxy in front of it).
    ingress_min_replicas: int = 1
    ingress_max_replicas: int = 2
    ingress_num_cpus: float = 0.5
    ingress_max_ongoing_requests: int = 1024  # streams held open by one ingress replica
    # Where the ingress and the reconciler run: by default the head node, whose disk holds
    # the registry file. An empty mapping: anywhere (the file on a shared volume).
    ingress_resources: Mapping[str, float] = field(
        default_factory=lambda: {"node:__internal_head__": 0.001}
    )
    reconcile_interval: float = 10.0  # how often Ray's state is compared with the registry
    defaults: DeploymentSettings = field(default_factory=DeploymentSettings)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per alias

    def __post_init__(self) -> None:
        for name in ("request_timeout", "reconcile_interval", "ingress_num_cpus"):
            _number(self, name, minimum=0, inclusive=False)
        _number(self, "replica_start_timeout", minimum=0, inclusive=False)
        _count(self, "ingress_max_ongoing_requests", minimum=1)
        if self.overload_status not in OVERLOAD_STATUSES:
            raise ValueError(
                f"overload_status must be one of {OVERLOAD_STATUSES}, got {self.overload_status!r}"
            )
        _count(self, "ingress_min_replicas", minimum=1)
        _count(self, "ingress_max_replicas", minimum=self.ingress_min_replicas)
        for alias in self.models:
            self.settings_for(alias)  # a bad override is a start-up error, not a later one

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], address: str | None = None) -> ClusterConfig:
        """From the `--ray-config` mapping (the config file's `ray_config` section): these
        fields, `defaults` (deployment settings of every model) and `models` (by alias)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"address"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        defaults = values.pop("defaults", {})
        models = values.pop("models", {})
        if not isinstance(defaults, Mapping) or not isinstance(models, Mapping):
            raise ValueError("defaults and models must be mappings")
        for alias, overrides in models.items():
            if not isinstance(overrides, Mapping):
                raise ValueError(f"models.{alias} must be a mapping of deployment settings")
        try:
            settings = DeploymentSettings().with_overrides(defaults)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"defaults.{exc}") from exc
        return cls(address=address, defaults=settings, models=dict(models), **values)

    def settings_for(self, alias: str) -> DeploymentSettings:
        """The model's deployment settings: the defaults, its own overrides, and a graceful
        shutdown that outlasts the longest allowed request."""
        try:
            settings = self.defaults.with_overrides(self.models.get(alias, {}))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"models.{alias}.{exc}") from exc
        floor = self.request_timeout + SHUTDOWN_MARGIN_S
        given = settings.graceful_shutdown_timeout_s
        return dataclasses.replace(settings, graceful_shutdown_timeout_s=max(floor, given or 0))


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(settings: object, name: str, minimum: int) -> None:
    value = getattr(settings, name)
    if not (_whole(value) and value >= minimum):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _number(settings: object, name: str, minimum: float, inclusive: bool = True) -> None:
    value = getattr(settings, name)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    above = number and (value >= minimum if inclusive else value > minimum)
    if not (above and math.isfinite(value)):
        bound = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be a number {bound} {minimum:g}, got {value!r}")
