#!/usr/bin/env bash
# Builds vlmserve's image from this checkout and proves it answers: /ready within
# READY_TIMEOUT with the tiny model, a structured answer (image + strict json_schema) that
# validates, a 400, and `docker stop` (SIGTERM) ending the container with exit code 0 within
# DRAIN_TIMEOUT. Prints the image size and the cold start.
#
# Installs what it lacks (docker.io, debootstrap: apt-get, as root), starts dockerd when none
# answers (and stops it again at the end), and builds the base image from Debian's packages
# when no BASE is given and python:3.11-slim can be neither found nor pulled. Safe to re-run:
# one run at a time per machine (a lock), its container removed on every exit.
#
# Environment (all optional):
#   BASE            base image (default: python:3.11-slim, else vlmserve-base:bookworm built here)
#   IMAGE           tag to build (default vlmserve:smoke)
#   READY_TIMEOUT   seconds from `docker run` to /ready (default 180)
#   DRAIN_TIMEOUT   seconds `docker stop` waits before SIGKILL (default 30)
#   SMOKE_NO_CACHE  1: build without Docker's layer cache and rebuild the base (a cold run)
#   TORCH_WHEELS    folder searched for a local torch +cpu wheel (default /opt/wheels)
set -euo pipefail
LOG_TAG=smoke
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE="${IMAGE:-vlmserve:smoke}"
READY_TIMEOUT="${READY_TIMEOUT:-180}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-30}"
SMOKE_NO_CACHE="${SMOKE_NO_CACHE:-0}"
TORCH_WHEELS="${TORCH_WHEELS:-/opt/wheels}"
DEBIAN_BASE="vlmserve-base:bookworm"
CONTAINER="vlmserve-smoke-$$"
STAGED_WHEEL=""
T_START=$(date +%s)

mkdir -p "$WORK_DIR"
exec 9> "$WORK_DIR/smoke.lock"
flock -w 1800 9 || die "another deploy/smoke.sh held $WORK_DIR/smoke.lock for 30 min"

cleanup() {
    local rc=$?
    if timeout 10 docker inspect "$CONTAINER" > /dev/null 2>&1; then
        if [[ $rc != 0 ]]; then
            log "container log (last 40 lines):"
            timeout 20 docker logs --tail 40 "$CONTAINER" >&2 2>&1 || true
        fi
        timeout 60 docker rm -f -v "$CONTAINER" > /dev/null 2>&1 || true
    fi
    if [[ -n "$STAGED_WHEEL" ]]; then rm -f "$STAGED_WHEEL"; fi
    stop_dockerd
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_tools_venv
ensure_dockerd
# Containers of an earlier run that was killed before its clean-up (the lock above makes
# sure none of them belongs to a run still going).
stale=$(timeout 20 docker ps -aq --filter label=vlmserve.smoke=1)
if [[ -n "$stale" ]]; then
    log "removing containers left by an earlier run: $stale"
    # shellcheck disable=SC2086  # one id per word
    timeout 60 docker rm -f -v $stale > /dev/null
fi

# The base: BASE if given (pulled if absent), else python:3.11-slim when it is here or can
# be pulled, else a bookworm image built from Debian's packages (kept for later runs).
choose_base() {
    if [[ -n "${BASE:-}" ]]; then
        timeout 20 docker image inspect "$BASE" > /dev/null 2>&1 \
            || timeout 600 docker pull "$BASE" > /dev/null || die "BASE=$BASE: not here, no pull"
        echo "$BASE"
        return
    fi
    if timeout 20 docker image inspect python:3.11-slim > /dev/null 2>&1 \
        || timeout 120 docker pull python:3.11-slim > /dev/null 2>&1; then
        echo python:3.11-slim
        return
    fi
    if [[ "$SMOKE_NO_CACHE" == 1 ]] || ! timeout 20 docker image inspect "$DEBIAN_BASE" > /dev/null 2>&1; then
        build_debian_base "$DEBIAN_BASE"
    fi
    echo "$DEBIAN_BASE"
}
base=$(choose_base)
log "base image: $base"

# torch: a local CPU wheel (the build prefers it) when the CPU index of the Dockerfile's
# default is not reachable from here; the build itself fails if torch is not a CPU build.
build_args=(--build-arg "BASE=$base")
wheel=$(find "$TORCH_WHEELS" -maxdepth 1 -name 'torch-2.13.0+cpu-cp311-*.whl' 2> /dev/null | head -1 || true)
if [[ -n "$wheel" ]]; then
    STAGED_WHEEL="$DEPLOY_DIR/wheels/$(basename "$wheel")"
    ln -f "$wheel" "$STAGED_WHEEL" 2> /dev/null || cp "$wheel" "$STAGED_WHEEL"
    build_args+=(--build-arg "TORCH_INDEX_URL=")
    log "torch from $wheel"
fi
# A cold run rebuilds the builder stage without cache; the final stage then reuses it.
no_cache=()
if [[ "$SMOKE_NO_CACHE" == 1 ]]; then no_cache=(--no-cache); fi

# The legacy builder (dockerd 20.10 from Debian has no buildx plugin next to it) leaves the
# builder stage as an untagged image: tagging it keeps it, and with it the layer cache of
# torch, when the superseded images of earlier runs are pruned below. --force-rm: a failed
# step's container would otherwise stay and pin its image against that pruning.
build() {
    DOCKER_BUILDKIT=0 timeout 1500 docker build --network host --force-rm \
        -f "$DEPLOY_DIR/Dockerfile" "${build_args[@]}" "$@" "$REPO_ROOT" \
        >> "$WORK_DIR/build.log" 2>&1 || {
        tail -40 "$WORK_DIR/build.log" >&2
        die "docker build (full log: $WORK_DIR/build.log)"
    }
}
log "building $IMAGE from $REPO_ROOT"
t0=$(date +%s)
: > "$WORK_DIR/build.log"
build --target builder -t "$IMAGE-builder" "${no_cache[@]}"
build -t "$IMAGE"
build_s=$(($(date +%s) - t0))
timeout 300 docker image prune -f --filter label=org.opencontainers.image.title=vlmserve \
    > /dev/null || log "could not prune superseded images (ignored)"
grep -m1 '^torch .* for TORCH_VARIANT=' "$WORK_DIR/build.log" >&2 || true
size_mb=$(($(timeout 20 docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000))
log "built in ${build_s} s; image size ${size_mb} MB"
[[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" == 10001:10001 ]] \
    || die "the image must run as user 10001"

# No network at all (the model is generated inside), read-only root, no capabilities: what
# the Kubernetes manifests ask for. The client joins the container's network namespace.
started=$(date +%s.%N)
timeout 120 docker run -d --name "$CONTAINER" --label vlmserve.smoke=1 --network none --read-only --tmpfs /tmp \
    --cap-drop ALL --security-opt no-new-privileges "$IMAGE" > /dev/null || die "docker run"
pid=$(timeout 20 docker inspect -f '{{.State.Pid}}' "$CONTAINER")
[[ "$pid" =~ ^[1-9][0-9]*$ ]] || die "container $CONTAINER is not running"
timeout $((READY_TIMEOUT + 300)) nsenter --net="/proc/$pid/ns/net" -- \
    "$TOOLS_VENV/bin/python" "$DEPLOY_DIR/smoke_client.py" --started "$started" \
    --ready-timeout "$READY_TIMEOUT" || die "smoke checks against $CONTAINER"

# Docker's own HEALTHCHECK (/health every 15 s) must turn healthy.
health=""
for ((i = 0; i < 60; i++)); do
    health=$(timeout 10 docker inspect -f '{{.State.Health.Status}}' "$CONTAINER")
    [[ "$health" == healthy ]] && break
    sleep 1
done
[[ "$health" == healthy ]] || die "HEALTHCHECK says '$health' after 60 s"
log "HEALTHCHECK: healthy"
# The attention kernel compiled inside the container (the image carries gcc for it).
kernel_log=$(timeout 20 docker logs "$CONTAINER" 2>&1) || die "docker logs"
grep -q "native attention kernel ready" <<< "$kernel_log" \
    || die "the attention kernel was not built in the container: $(grep -m1 'native attention' <<< "$kernel_log")"
log "attention kernel: built in the container"

t0=$(date +%s.%N)
timeout $((DRAIN_TIMEOUT + 30)) docker stop -t "$DRAIN_TIMEOUT" "$CONTAINER" > /dev/null \
    || die "docker stop"
stop_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
    "$t0" "$(date +%s.%N)")
code=$(timeout 10 docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
[[ "$code" == 0 ]] || die "exit code $code after SIGTERM (137: killed after ${DRAIN_TIMEOUT} s)"
log "SIGTERM: exit code 0 after ${stop_s} s (limit ${DRAIN_TIMEOUT} s)"

log "PASSED: image $IMAGE ${size_mb} MB (base $base), build ${build_s} s, total $(($(date +%s) - T_START)) s"
