#!/usr/bin/env bash
# Prepare Docker on a machine that has no image registry (idempotent; Debian, as root):
#   1. install docker.io, docker-compose and debootstrap with apt-get if missing;
#   2. start dockerd in the background if `docker info` fails;
#   3. build a Debian bookworm base image with debootstrap (python3, pip, venv) and `docker import` it
#      as $PINFER_BASE_IMAGE (default pinfer-base:bookworm), unless `docker image inspect` finds it.
# Pass the result to the image build: deploy/smoke.sh does, or
#   docker build -f deploy/Dockerfile --build-arg BASE_IMAGE=pinfer-base:bookworm .
# Where an image registry is reachable none of this is needed: the Dockerfile's default base is
# python:3.11-slim.
#
# Environment: PINFER_BASE_IMAGE (tag to build), DEBIAN_MIRROR (default: the first Debian URI in this
#              machine's apt sources, else debootstrap's own default), DOCKERD_LOG (default
#              /var/log/dockerd.log).
# Exit status: 0 when Docker works and the base image exists; 2 when this machine cannot be prepared
# (not root, not Debian, no apt-get), with the reason on stderr; anything else is a failure.
set -euo pipefail

BASE_IMAGE="${PINFER_BASE_IMAGE:-pinfer-base:bookworm}"
# The mirror this machine's apt already uses (deb822 "URIs:" or one-line "deb URI suite"), so no
# mirror is named here; empty lets debootstrap pick its default.
# Missing files and empty matches are normal (this script runs under pipefail): they yield no mirror.
apt_mirror() {
    local files=() file
    for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$file" ]] && files+=("$file")
    done
    ((${#files[@]})) || return 0
    { grep -hE '^URIs:' "${files[@]}" | awk '{print $2}' || true
      grep -hE '^deb ' "${files[@]}" | awk '{for (i = 2; i <= NF; i++) if ($i !~ /^\[/) {print $i; break}}' || true
    } | { grep -E '/debian/?$' || true; } | head -n 1
}
MIRROR="${DEBIAN_MIRROR:-$(apt_mirror)}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"

log() { printf '[docker-prep] %s\n' "$*" >&2; }
cannot() { log "cannot prepare Docker here: $*"; exit 2; }

have_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; }

# --- 1. packages ---------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
have_compose || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    [[ "$(id -u)" == 0 ]] || cannot "missing ${missing[*]} and not running as root (apt-get needs root)"
    command -v apt-get >/dev/null 2>&1 || cannot "missing ${missing[*]} and there is no apt-get (Debian only)"
    grep -qiE '^(ID|ID_LIKE)=.*debian' /etc/os-release 2>/dev/null || cannot "missing ${missing[*]} on a non-Debian system"
    mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing ${pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # No init system here: keep the packages' maintainer scripts from starting services.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e "$policy" ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1; fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    if ((made_policy)); then rm -f "$policy"; fi
fi

# --- 2. the engine ---------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] || cannot "'docker info' fails and only root can start dockerd"
    command -v dockerd >/dev/null 2>&1 || cannot "no dockerd"
    if pgrep -x dockerd >/dev/null 2>&1; then
        log "dockerd is running but not answering yet; waiting"
    else
        log "starting dockerd in the background (log: $DOCKERD_LOG)"
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up; tail of $DOCKERD_LOG:"; tail -n 20 "$DOCKERD_LOG" >&2; exit 1; }
fi
have_compose || cannot "no 'docker compose' plugin and no docker-compose"

# --- 3. the base image -------------------------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"
    exit 0
fi
[[ "$(id -u)" == 0 ]] || cannot "debootstrap needs root"
command -v debootstrap >/dev/null 2>&1 || cannot "no debootstrap"
rootfs="$(mktemp -d -t pinfer-rootfs-XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
log "debootstrap bookworm (${MIRROR:-the default mirror of debootstrap}) into $rootfs (a few minutes, once)"
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$rootfs" ${MIRROR:+"$MIRROR"} >"$rootfs.log" 2>&1 \
    || { log "debootstrap failed; tail of its log:"; tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# Smaller image: no package lists, caches, docs or man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
log "importing it as $BASE_IMAGE"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE" >/dev/null
log "base image $BASE_IMAGE ready"
