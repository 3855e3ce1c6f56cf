"""Offline checks of the rendered KubeRay manifests (deploy/k8s/ray), run by deploy/check.sh:

    python deploy/k8s/ray/check_rayservice.py RENDERED.yaml KUBE_OUT.yaml

- The RayService validates against KubeRay's CRD schema (`schema/rayservice-v1.json`: the
  `ray.io/v1` openAPIV3Schema of ray-operator/config/crd/bases/ray.io_rayservices.yaml at
  KubeRay v1.7.0, Apache-2.0), strictly: an unknown field is an error, as with
  `kubernetes-validate --strict` (the API server would drop it silently).
- Every pod template (head, each worker group) is written out as a Pod to KUBE_OUT, with the
  other rendered objects (claims, network policy), which check.sh validates against the
  Kubernetes schemas like any other manifest.
- The pieces fit: serveConfigV2 names vlmserve's application builder and its `argv` are
  flags `vlmserve serve --ray` accepts (parsed by the CLI itself, with a stand-in for the keys
  file) with a valid `--ray-config`; rayVersion is the `ray` extra's pin; claims and volumes
  resolve; the keys reach every pod (Serve may build the application on any node) and the
  registry's claim the head; workers outlast the longest request when they are removed.

Runs with the project's venv (vlmserve, pyyaml, jsonschema). Exits 1 listing every failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SCHEMA = HERE / "schema" / "rayservice-v1.json"
KEYS = "/etc/vlmserve/keys/keys.yaml"
BUILDER = "vlmserve.cli.cluster:build"
SHUTDOWN_MARGIN_S = 15


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties and does
    not keep unknown fields on purpose."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    closed = "properties" in out and "additionalProperties" not in out
    if closed and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def ray_pin() -> str:
    text = (REPO / "pyproject.toml").read_text()
    found = re.search(r'"ray\[serve\]==([^"]+)"', text)
    return found.group(1) if found else "?"


def check_schema(service: dict[str, Any], errors: list[str]) -> None:
    validator = jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))
    for error in sorted(validator.iter_errors(service), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.path) or "(root)"
        errors.append(f"RayService {where}: {error.message}")


def check_argv(argv: list[str], errors: list[str]) -> float | None:
    """The application's flags as `build` parses them; the request timeout they set."""
    from vlmserve.cli import parse_args
    from vlmserve.cli.configs import build_configs
    from vlmserve.cluster.settings import ClusterConfig

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yaml"
        keys.write_text("api-key: stand-in-key\nadmin-api-key: stand-in-admin-key\n")
        args = [a.replace(KEYS, str(keys)) for a in argv]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parsed = parse_args(["serve", "--ray", *args])
            build_configs(parsed, "registered-models-only", None, None)
            cluster = ClusterConfig.from_mapping(parsed.ray_config)
        except SystemExit:
            reason = (stderr.getvalue().strip().splitlines() or ["no message"])[-1]
            errors.append(f"vlmserve serve --ray refuses the argv: {reason}")
            return None
        except (TypeError, ValueError) as exc:
            errors.append(f"vlmserve serve --ray refuses the argv: {exc}")
            return None
    if parsed.api_key is None or parsed.admin_api_key is None:
        errors.append("the argv's keys file does not set api-key and admin-api-key")
    if not (parsed.registry or "").startswith("/data/"):
        errors.append("--registry must be on the head's /data claim")
    for alias in cluster.models:
        cluster.settings_for(alias)
    return cluster.request_timeout


def check_serve_config(spec: dict[str, Any], errors: list[str]) -> float | None:
    config = yaml.safe_load(spec.get("serveConfigV2", "")) or {}
    apps = config.get("applications", [])
    if len(apps) != 1:
        errors.append("serveConfigV2 must hold the vlmserve application only (models are derived)")
        return None
    (app,) = apps
    if app.get("import_path") != BUILDER:
        errors.append(f"serveConfigV2's import_path must be {BUILDER}")
    if app.get("route_prefix") != "/":
        errors.append("serveConfigV2's application must serve route_prefix /")
    argv = (app.get("args") or {}).get("argv")
    if not isinstance(argv, list):
        errors.append("serveConfigV2's args.argv must be a list of `vlmserve serve` flags")
        return None
    return check_argv([str(a) for a in argv], errors)


def pods(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = spec["rayClusterConfig"]
    found = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        found[f"worker-{group['groupName']}"] = group["template"]
    return found


def check_pod(name: str, template: dict[str, Any], claims: set[str], errors: list[str]) -> None:
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    wanted = ["/models", "/dev/shm", str(Path(KEYS).parent)]
    if name == "head":
        wanted.append("/data")
    for path in wanted:
        if path not in mounts:
            errors.append(f"{name}: nothing mounted at {path}")
    for volume in mounts.values():
        if volume not in volumes:
            errors.append(f"{name}: volume {volume} is mounted but not defined")
    for volume in volumes.values():
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim is not None and claim not in claims:
            errors.append(f"{name}: claim {claim} is used but not rendered")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            errors.append(f"{name}: {probe} missing")


def main(rendered: Path, kube_out: Path) -> int:
    objects = [o for o in yaml.safe_load_all(rendered.read_text()) if o]
    services = [o for o in objects if o.get("kind") == "RayService"]
    if len(services) != 1:
        print(f"FAILED: expected one RayService, found {len(services)}", file=sys.stderr)
        return 1
    (service,) = services
    spec = service["spec"]
    errors: list[str] = []
    check_schema(service, errors)
    if spec["rayClusterConfig"].get("rayVersion") != ray_pin():
        errors.append(f"rayVersion must be the ray extra's pin {ray_pin()}")
    request_timeout = check_serve_config(spec, errors)
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    templates = pods(spec)
    for name, template in templates.items():
        check_pod(name, template, claims, errors)
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)
        if name != "head" and request_timeout and grace < request_timeout + SHUTDOWN_MARGIN_S:
            errors.append(f"{name}: terminationGracePeriodSeconds is shorter than a request")
    as_pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**t.get("metadata", {}), "name": f"vlmserve-ray-{name}"},
            "spec": t["spec"],
        }
        for name, t in templates.items()
    ]
    others = [o for o in objects if o is not service]
    kube_out.write_text(yaml.safe_dump_all([*as_pods, *others], sort_keys=False))
    if errors:
        print("FAILED:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    print(f"RayService valid (KubeRay CRD, strict); {len(templates)} pod templates written")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
