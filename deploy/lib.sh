# Shared by deploy/smoke.sh and deploy/check.sh (sourced, not run): logging, the tools venv,
# Debian packages, the Docker daemon and a base image built from Debian's packages.
# Every wait and every external command is bounded: these run unattended in CI.

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"
TOOLS_VENV="$DEPLOY_DIR/.venv"
# Scratch space that survives between runs (base rootfs, daemon log); not in the repository.
WORK_DIR="${VLMSERVE_DEPLOY_WORKDIR:-/var/tmp/vlmserve-deploy}"

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${LOG_TAG:-deploy}" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

# The linters, kustomize renderer, schema validator and smoke client, pinned in
# deploy/requirements.txt; rebuilt only when that file changes.
ensure_tools_venv() {
    local stamp="$TOOLS_VENV/.installed"
    if [[ -f "$stamp" && "$stamp" -nt "$DEPLOY_DIR/requirements.txt" ]]; then
        return
    fi
    log "installing deploy tools into $TOOLS_VENV"
    rm -rf "$TOOLS_VENV"
    timeout 120 python3 -m venv "$TOOLS_VENV" || die "python3 -m venv $TOOLS_VENV"
    # pip's output goes to a log shown on failure (this machine's pip set-up is chatty).
    timeout 600 "$TOOLS_VENV/bin/python" -m pip install -q -r "$DEPLOY_DIR/requirements.txt" \
        > "$WORK_DIR/tools-pip.log" 2>&1 || {
        tail -20 "$WORK_DIR/tools-pip.log" >&2
        die "pip install -r deploy/requirements.txt"
    }
    touch "$stamp"
}

# Installing packages needs root and apt-get: without them, say so and fail (never skip).
apt_install() {
    [[ "$(id -u)" == 0 ]] || die "need root to apt-get install $* (or install it yourself)"
    command -v apt-get > /dev/null || die "no apt-get to install $*; install it yourself"
    log "apt-get install $*"
    timeout 300 apt-get update -qq || die "apt-get update"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
        "$@" > "$WORK_DIR/apt.log" 2>&1 || {
        tail -20 "$WORK_DIR/apt.log" >&2
        die "apt-get install $*"
    }
}

# A daemon that answers. One that was already running is used as it is; otherwise dockerd
# is started here (and DOCKERD_PID set, for stop_dockerd) without a bridge network or
# iptables rules: the build uses the host network and the smoke container none, so the
# daemon changes nothing in the machine's network set-up.
DOCKERD_PID=""
ensure_dockerd() {
    if timeout 20 docker info > /dev/null 2>&1; then
        return
    fi
    command -v dockerd > /dev/null || apt_install docker.io
    command -v docker > /dev/null || die "docker.io installed no docker client"
    [[ "$(id -u)" == 0 ]] || die "no Docker daemon answers and starting one needs root"
    log "starting dockerd (log: $WORK_DIR/dockerd.log)"
    dockerd --bridge=none --iptables=false --ip6tables=false \
        < /dev/null > "$WORK_DIR/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    local i
    for ((i = 0; i < 60; i++)); do
        if timeout 5 docker info > /dev/null 2>&1; then
            return
        fi
        kill -0 "$DOCKERD_PID" 2> /dev/null || break
        sleep 1
    done
    tail -20 "$WORK_DIR/dockerd.log" >&2
    die "dockerd did not answer within 60 s"
}

# Stops the daemon only if this script started it.
stop_dockerd() {
    [[ -n "$DOCKERD_PID" ]] || return 0
    log "stopping the dockerd started here (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2> /dev/null || return 0
    local i
    for ((i = 0; i < 30; i++)); do
        kill -0 "$DOCKERD_PID" 2> /dev/null || return 0
        sleep 1
    done
    kill -KILL "$DOCKERD_PID" 2> /dev/null || true
}

# A bookworm root filesystem with python3 and python3-venv, imported as image NAME. The
# host's CA bundle goes in (with a pip setting that uses it) because a package mirror may
# present its own CA; apt inside uses plain http, as debootstrap did.
build_debian_base() {
    local name="$1" rootfs="$WORK_DIR/rootfs"
    command -v debootstrap > /dev/null || apt_install debootstrap
    [[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
    # A run killed mid-way can leave /proc etc. mounted inside: unmount before deleting, and
    # never let rm cross into another filesystem.
    local mnt
    for mnt in proc sys dev/pts dev; do
        if mountpoint -q "$rootfs/$mnt" 2> /dev/null; then umount -l "$rootfs/$mnt"; fi
    done
    rm -rf --one-file-system "$rootfs"
    log "debootstrap bookworm into $rootfs (about 90 s)"
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
        > "$WORK_DIR/debootstrap.log" 2>&1 || {
        tail -20 "$WORK_DIR/debootstrap.log" >&2
        die "debootstrap"
    }
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    log "importing $rootfs as $name"
    tar -C "$rootfs" -c . | timeout 600 docker import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$name" > /dev/null \
        || die "docker import"
    rm -rf --one-file-system "$rootfs"
}
