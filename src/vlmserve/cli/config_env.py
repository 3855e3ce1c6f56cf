"""`vlmserve serve`'s flags from `VLMSERVE_*` environment variables, and `--print-config`.

Every flag `--some-flag` can be given as `VLMSERVE_SOME_FLAG` (MODEL as `VLMSERVE_MODEL`,
`--config` as `VLMSERVE_CONFIG`), parsed and checked as the flag would be. Where a setting
comes from, strongest first: the command line, the environment, the `--config` file, the
flag's default. Containers and Kubernetes set the environment; nothing else changes.

A `VLMSERVE_*` variable that names no flag is refused (a typo is never silently ignored),
except the variables vlmserve reads for other purposes (`NOT_FLAGS`) and those Kubernetes
injects for a Service named `vlmserve` (`VLMSERVE_SERVICE_HOST`, `VLMSERVE_PORT_8000_TCP`, …;
its `VLMSERVE_PORT=tcp://…` would be taken for `--port`: the manifests set
`enableServiceLinks: false`, and the error says so).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any

import yaml

from vlmserve.cli.config_file import check_choice, config_value
from vlmserve.config import MediaFetchTimeout

PREFIX = "VLMSERVE_"
# Read elsewhere, not flags: the data and cache folders, the admin key `vlmserve models` sends.
NOT_FLAGS = frozenset(
    {"VLMSERVE_DATA_DIR", "VLMSERVE_CACHE", "VLMSERVE_ADMIN_KEY", "VLMSERVE_NATIVE_KERNELS"}
)
_SERVICE_LINK = re.compile(r"VLMSERVE_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_\w+)")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Never printed: what a key gives access to. (A keys file's path is not a secret.)
SECRETS = frozenset({"api_key", "admin_api_key"})
HIDDEN = "<hidden>"
NOT_SETTINGS = frozenset({"help", "func", "command", "config", "print_config"})


def env_name(action: argparse.Action) -> str:
    flag = next((o for o in action.option_strings if o.startswith("--")), None)
    name = flag[2:] if flag is not None else action.dest
    return PREFIX + name.upper().replace("-", "_")


def env_settings(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> dict[str, Any]:
    """The flags' values found in `environ`, by destination, parsed as on the command line;
    ValueError naming the variable otherwise."""
    actions = {env_name(a): a for a in parser._actions if a.dest not in NOT_SETTINGS | {"version"}}
    found: dict[str, Any] = {}
    for name, text in sorted(environ.items()):
        if not name.startswith(PREFIX) or name in NOT_FLAGS or name == PREFIX + "CONFIG":
            continue
        if _SERVICE_LINK.fullmatch(name):
            continue
        action = actions.get(name)
        if action is None:
            raise ValueError(
                f"{name} names no flag of vlmserve serve (flags are VLMSERVE_ plus the flag's "
                "name in capitals, dashes as underscores, e.g. VLMSERVE_MAX_MODEL_LEN)"
            )
        try:
            found[action.dest] = _parse(action, name, text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            message = str(exc)
            if name == PREFIX + "PORT" and text.startswith("tcp://"):
                message += (
                    " (this is the address Kubernetes injects for a Service named vlmserve: "
                    "set enableServiceLinks: false on the pod, as deploy/k8s does)"
                )
            raise ValueError(message) from None
    return found


def _parse(action: argparse.Action, name: str, text: str) -> Any:
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        word = text.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError(f"{name}: give true or false (1/0, yes/no, on/off), got {text!r}")
    value = config_value(action, name, text)
    try:
        check_choice(action, value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return value


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    path: str | None = getattr(args, "config", None) or environ.get(PREFIX + "CONFIG") or None
    return path


def render_config(args: argparse.Namespace) -> str:
    """The effective settings as a YAML file `--config` accepts, secrets hidden."""
    settings: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in NOT_SETTINGS:
            continue
        if key in SECRETS and value is not None:
            value = HIDDEN
        elif isinstance(value, MediaFetchTimeout):
            value = f"{value.connect:g},{value.read:g},{value.total:g}"
        settings[key] = value
    header = (
        "# vlmserve serve: the effective settings (command line > VLMSERVE_* environment >\n"
        "# --config file > defaults); secrets are shown as <hidden>. A --config file.\n"
    )
    return header + yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)
