"""What schemas cannot see in the rendered manifests: that the pieces fit each other and the
server. Run by deploy/check.sh on each `kubectl kustomize` output:

    python deploy/check_manifests.py OVERLAY_NAME RENDERED.yaml

Checks that the container's arguments are flags `vlmserve serve` accepts (parsed by the CLI
itself, so this runs with the project's venv); that the probes hit routes the server has, on
a port the container declares, with a startup budget that covers liveness; that every volume,
claim, selector and HPA target resolves; that the HPA scales on metrics the server exports;
and that the image variant (cpu / cuda) matches the GPU request. Exits 1 listing every
failure.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
API = REPO / "src" / "vlmserve" / "api"
KEYS_MOUNT = "/etc/vlmserve/keys"


def server_routes() -> set[str]:
    text = (API / "routes.py").read_text()
    return set(re.findall(r'@router\.get\(\s*"([^"]+)"', text))


def server_metrics() -> set[str]:
    """The metric families /metrics serves, asked of the server's own registry."""
    from vlmserve.api.metrics import Metrics

    return {family.name for family in Metrics(lambda: [], lambda: []).registry.collect()}


def check_args(args: list[str], env: list[dict[str, Any]], errors: list[str]) -> None:
    """Parses the arguments as the image's entrypoint would pass them, with the container's
    VLMSERVE_* variables (which set flags too) and a stand-in for the keys file the Secret
    provides."""
    from vlmserve.cli import parse_args
    from vlmserve.cli.configs import build_configs

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yaml"
        keys.write_text("api-key: stand-in-key\nadmin-api-key: stand-in-admin-key\n")
        argv = [a.replace(f"{KEYS_MOUNT}/keys.yaml", str(keys)) for a in args]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                environ = {e["name"]: str(e["value"]) for e in env if "value" in e}
                parsed = parse_args(["serve", "--host", "0.0.0.0", *argv], environ)
            build_configs(parsed, parsed.model or "tiny", None, None)
        except SystemExit:
            reason = (stderr.getvalue().strip().splitlines() or ["no message"])[-1]
            errors.append(f"vlmserve serve refuses the args: {reason}")
            return
        except ValueError as exc:
            errors.append(f"vlmserve serve refuses the args: {exc}")
            return
    if parsed.api_key is None or parsed.admin_api_key is None:
        errors.append("the keys file does not set api-key and admin-api-key")


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_probes(container: dict[str, Any], errors: list[str]) -> None:
    ports = {p.get("name") for p in container.get("ports", [])}
    routes = server_routes()
    # The port opens before the model loads (/health 200 at once): only /ready waits for
    # the load and the warm-up, so only it can guard liveness while the model loads.
    wanted = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    for probe_name, path in wanted.items():
        probe = container.get(probe_name)
        if probe is None:
            errors.append(f"{probe_name} missing")
            continue
        get = probe.get("httpGet", {})
        if get.get("path") != path:
            errors.append(f"{probe_name} must GET {path}, not {get.get('path')}")
        if get.get("path") not in routes:
            errors.append(f"{probe_name}: the server has no route {get.get('path')}")
        if get.get("port") not in ports:
            errors.append(f"{probe_name}: port {get.get('port')!r} is not a container port")
    startup, liveness = container.get("startupProbe"), container.get("livenessProbe")
    if startup and liveness:

        def budget(p: dict[str, Any]) -> int:
            return int(p.get("periodSeconds", 10)) * int(p.get("failureThreshold", 3))

        if budget(startup) < budget(liveness):
            errors.append("the startup probe's budget is shorter than the liveness probe's")


def check_pod(pod: dict[str, Any], claims: set[str], overlay: str, errors: list[str]) -> None:
    (container,) = pod["spec"]["containers"]
    check_probes(container, errors)
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    for path in ("/models", "/data", "/dev/shm", "/tmp", KEYS_MOUNT):
        if path not in mounts:
            errors.append(f"nothing mounted at {path}")
    for name in mounts.values():
        if name not in volumes:
            errors.append(f"volume {name} is mounted but not defined")
    for volume in volumes.values():
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim is not None and claim not in claims:
            errors.append(f"claim {claim} is used but not rendered")
    shm = volumes.get(mounts.get("/dev/shm", ""), {}).get("emptyDir", {})
    if shm.get("medium") != "Memory":
        errors.append("/dev/shm must be a memory-backed emptyDir")
    args = container.get("args", [])
    check_args(args, container.get("env", []), errors)
    if f"--config={KEYS_MOUNT}/keys.yaml" not in args:
        errors.append("args must read the API keys file (--config)")
    if not any(a.startswith("--cpu-threads=") for a in args):
        errors.append("args must set --cpu-threads (the default counts the node's cores)")
    security = container.get("securityContext", {})
    if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation"):
        errors.append("the container must run read-only without privilege escalation")
    if not pod["spec"].get("securityContext", {}).get("runAsNonRoot"):
        errors.append("the pod must run as non-root")
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    tag = container["image"].rpartition(":")[2]
    if overlay == "gpu" and (not gpus or not tag.endswith("-cuda")):
        errors.append(f"gpu overlay: needs an nvidia.com/gpu limit and a -cuda image ({tag})")
    if overlay != "gpu" and (gpus or tag.endswith("-cuda")):
        errors.append(f"{overlay}: a GPU request or CUDA image outside the gpu overlay")
    for name in ("requests", "limits"):
        if "memory" not in container.get("resources", {}).get(name, {}):
            errors.append(f"resources.{name}.memory missing")


def check(overlay: str, objects: list[dict[str, Any]]) -> list[str]:
    errors: list[str] = []
    claims = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    deployments = by_kind(objects, "Deployment")
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    (deployment,) = deployments
    pod = deployment["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    if not selects(deployment["spec"]["selector"]["matchLabels"], labels):
        errors.append("the Deployment's selector does not match its pods")
    check_pod(pod, claims, overlay, errors)
    for service in by_kind(objects, "Service"):
        if not selects(service["spec"].get("selector", {}), labels):
            errors.append(f"Service {service['metadata']['name']} selects no vlmserve pod")
    policies = by_kind(objects, "NetworkPolicy")
    if not any(selects(p["spec"]["podSelector"].get("matchLabels", {}), labels) for p in policies):
        errors.append("no NetworkPolicy applies to the vlmserve pods")
    for policy in policies:
        if "Egress" not in policy["spec"].get("policyTypes", []):
            errors.append(f"NetworkPolicy {policy['metadata']['name']} does not limit egress")
    exported = server_metrics()
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
            errors.append("the HPA targets another Deployment")
        if "replicas" in deployment["spec"]:
            errors.append("with an HPA the Deployment must not set replicas")
        for metric in hpa["spec"].get("metrics", []):
            name = metric.get("pods", {}).get("metric", {}).get("name")
            if name is not None and name not in exported:
                errors.append(f"the HPA scales on {name}, which the server does not export")
    return errors


def main(argv: list[str]) -> int:
    overlay, rendered = argv
    objects = [o for o in yaml.safe_load_all(Path(rendered).read_text()) if o]
    errors = check(overlay, objects)
    for error in errors:
        print(f"{overlay}: {error}", file=sys.stderr)
    kinds = sorted({o["kind"] for o in objects})
    if not errors:
        print(f"{overlay}: {len(objects)} objects fit together ({', '.join(kinds)})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
