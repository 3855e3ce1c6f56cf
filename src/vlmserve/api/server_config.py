"""What the HTTP server needs besides the engine, plus the config-file reader behind
`vlmserve serve --config FILE` (YAML or TOML, the same keys as the flags)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlmserve.api.tenants import load_keys_file
from vlmserve.config import RegistryConfig
from vlmserve.config import data_dir as default_data_dir


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None: the model argument as given
    api_key: str | None = None  # required on /v1/* when set
    admin_api_key: str | None = None  # required on /metrics when set
    # YAML or JSON: key -> tenant and limits (docs/security.md); re-read when it changes.
    api_keys_file: str | None = None
    max_request_body_bytes: int = 32 * 1024 * 1024
    max_waiting: int = 1024  # requests in flight before new ones get 429
    # torch intra-op threads for the whole process (the server owns it, not an engine);
    # None keeps torch's default (one per core).
    cpu_threads: int | None = None
    # Each model's engine in a process of its own (registry/process_host.py), not a thread of
    # this one.
    engine_process: bool = False
    registry_path: str | None = None  # the registry file; None: registry.db in state_dir()
    registry: RegistryConfig = field(default_factory=RegistryConfig)  # model lifecycles
    # /ready answers 503 when an engine holds requests and no step completed for this long;
    # 0 turns the watchdog off.
    watchdog_seconds: float = 60.0
    log_requests: bool = False  # log request bodies (prompts, images): debugging only
    # After SIGTERM, requests in flight get this long to finish (docs/deploy.md).
    shutdown_timeout: float = 30.0
    # A connection must send a whole request head within this long, and a request's body
    # must arrive within body_read_timeout: slow clients cannot hold connections or buffers.
    header_read_timeout: float = 15.0
    body_read_timeout: float = 60.0
    timeout_keep_alive: float = 5.0  # an idle keep-alive connection is closed after this
    limit_concurrency: int = 1024  # open connections + requests; above, uvicorn answers 503
    data_dir: str | None = None  # see state_dir()

    def state_dir(self) -> Path:
        """The one folder for durable state, the model registry and stored responses alike:
        `--data-dir`, else vlmserve.config.data_dir()."""
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_request_body_bytes < 1:
            raise ValueError("max_request_body_bytes must be at least 1")
        if self.max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, got {self.cpu_threads}")
        if not self.watchdog_seconds >= 0:
            raise ValueError(f"watchdog_seconds must be >= 0, got {self.watchdog_seconds}")
        for name in (
            "shutdown_timeout",
            "header_read_timeout",
            "body_read_timeout",
            "timeout_keep_alive",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.limit_concurrency < 1:
            raise ValueError(f"limit_concurrency must be at least 1, got {self.limit_concurrency}")
        for name in ("api_key", "admin_api_key"):
            key = getattr(self, name)
            # compare_digest needs ASCII; an empty key would let an empty bearer in.
            if key is not None and (not key or not key.isascii()):
                raise ValueError(f"{name} must be a non-empty ASCII string")
        if self.api_keys_file is not None:
            try:
                load_keys_file(self.api_keys_file)  # a bad file stops the start with its reason
            except OSError as exc:
                raise ValueError(
                    f"api_keys_file {self.api_keys_file}: {exc.strerror or exc}"
                ) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The file's top-level mapping, keys normalised to flag destinations (dashes -> _)."""
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ValueError(f"config file {path} must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"config file {path} does not parse: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of flag names to values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
