#!/usr/bin/env bash
# Offline checks of the deployment artefacts (no cluster, no Docker daemon):
#   - hadolint on deploy/Dockerfile (exceptions are justified inline);
#   - every kustomize tree (base, overlays/*) rendered with `kubectl kustomize`, validated
#     strictly (unknown fields are errors) against the Kubernetes schemas of K8S_VERSIONS,
#     with a kind that has no schema counted as a failure, then checked for fit by
#     deploy/check_manifests.py (probes vs the server's routes, volumes, selectors, HPA);
#   - ruff on deploy/*.py, bash -n on deploy/*.sh.
# Tools come pinned from deploy/requirements.txt into deploy/.venv.
set -euo pipefail
LOG_TAG=check
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The oldest minor version still widely run by managed clusters, and the newest with schemas.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"

mkdir -p "$WORK_DIR"
ensure_tools_venv
# The manifest checks parse the containers' arguments with vlmserve's own CLI: the project's
# venv (already there after `make test`).
timeout 900 make -C "$REPO_ROOT" -s .venv/.installed > "$WORK_DIR/venv.log" 2>&1 || {
    tail -20 "$WORK_DIR/venv.log" >&2
    die "make .venv/.installed"
}
bin="$TOOLS_VENV/bin"
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT

log "hadolint deploy/Dockerfile"
timeout 120 "$bin/hadolint" "$DEPLOY_DIR/Dockerfile" || die "hadolint"

trees=("$DEPLOY_DIR/k8s/base" "$DEPLOY_DIR"/k8s/overlays/*/)
for tree in "${trees[@]}"; do
    name="$(basename "$tree")"
    out="$rendered/$name.yaml"
    timeout 120 "$bin/kubectl" kustomize "$tree" > "$out" || die "kubectl kustomize $tree"
    for version in $K8S_VERSIONS; do
        report="$(timeout 300 "$bin/kubernetes-validate" --strict --quiet \
            -k "$version" "$out" 2>&1)" || {
            echo "$report" >&2
            die "$name does not validate against Kubernetes $version"
        }
        # --quiet prints only warnings and errors: a warning is a kind without a schema.
        [[ -z "$report" ]] || {
            echo "$report" >&2
            die "$name: not every object was validated against Kubernetes $version"
        }
    done
    timeout 120 "$REPO_ROOT/.venv/bin/python" "$DEPLOY_DIR/check_manifests.py" "$name" "$out" \
        || die "$name: manifests do not fit together"
    log "$name: $(grep -c '^kind:' "$out") objects valid for Kubernetes ${K8S_VERSIONS// /, }"
done

# KubeRay's RayService (docs/ray.md): KubeRay's CRD schema and the fit of its pieces, then its
# pod templates and other objects against the Kubernetes schemas (deploy/k8s/ray/).
ray_dir="$DEPLOY_DIR/k8s/ray"
timeout 120 "$bin/hadolint" "$ray_dir/Dockerfile" || die "hadolint $ray_dir/Dockerfile"
timeout 120 "$bin/kubectl" kustomize "$ray_dir" > "$rendered/ray.yaml" || die "kubectl kustomize $ray_dir"
timeout 120 "$REPO_ROOT/.venv/bin/python" "$ray_dir/check_rayservice.py" "$rendered/ray.yaml" \
    "$rendered/ray-kube.yaml" || die "ray: the RayService does not validate or fit"
for version in $K8S_VERSIONS; do
    timeout 300 "$bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered/ray-kube.yaml" \
        || die "ray: its pods and objects do not validate against Kubernetes $version"
done
log "ray: RayService and $(grep -c '^kind:' "$rendered/ray-kube.yaml") objects valid"

log "ruff and bash -n on deploy/"
(cd "$REPO_ROOT" && timeout 120 "$bin/ruff" check deploy && timeout 120 "$bin/ruff" format --check deploy) \
    || die "ruff on deploy/"
for script in "$DEPLOY_DIR"/*.sh; do bash -n "$script" || die "bash -n $script"; done
log "PASSED"
