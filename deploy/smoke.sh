#!/usr/bin/env bash
# Smoke test of the docker-compose deployment: build the image, bring orchestrator, two parties and
# the dealer up, run one private generation through the orchestrator with this checkout's client SDK,
# check that its text equals the local run's (`pinfer generate` without --endpoint), tear down.
#
# Base image: BASE_IMAGE if set; else python:3.11-slim when it is present or can be pulled; else (no
# image registry) the debootstrap image of deploy/base-image.sh, which this script then builds.
#
# Environment: BASE_IMAGE, PINFER_MODEL (default tiny-llama), PINFER_PORT (host port of the
# orchestrator, default 17000), PYTHON (client interpreter, default .venv/bin/python),
# PIP_INDEX_URL (index for the image build), PINFER_SMOKE_KEEP_IMAGE=0 (remove the image at the end).
# Build extras come from the host's pip set-up (see deploy/build-extra/README.md): a torch wheel of
# the pinned version found in PIP_FIND_LINKS / pip's find-links, and pip's CA bundle.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-.venv/bin/python}"
PROMPT="${PINFER_PROMPT:-The quick brown fox}"
TOKENS=6
TORCH_VERSION=2.13.0
export PINFER_MODEL="${PINFER_MODEL:-tiny-llama}"
export PINFER_PORT="${PINFER_PORT:-17000}"
export PINFER_IMAGE="pinfer:smoke"
log() { printf 'smoke: %s\n' "$*" >&2; }

if docker compose version >/dev/null 2>&1; then
    compose() { docker compose -f deploy/docker-compose.yml -p pinfer-smoke "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
    compose() { docker-compose -f deploy/docker-compose.yml -p pinfer-smoke "$@"; }
else
    log "neither 'docker compose' nor 'docker-compose' is available (deploy/base-image.sh installs one)"
    exit 1
fi

# --- base image -------------------------------------------------------------------------------------
if [[ -z "${BASE_IMAGE:-}" ]]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1 \
        || timeout 300 docker pull -q python:3.11-slim >/dev/null 2>&1; then
        BASE_IMAGE=python:3.11-slim
    else
        log "python:3.11-slim cannot be pulled (no image registry?): using the debootstrap base image"
        BASE_IMAGE="${PINFER_BASE_IMAGE:-pinfer-base:bookworm}"
        PINFER_BASE_IMAGE="$BASE_IMAGE" deploy/base-image.sh
    fi
fi

# --- build extras from the host's pip set-up: the CPU torch wheel and the CA bundle ----------------
extra=deploy/build-extra
rm -rf "$extra/wheels" "$extra/ca-certificates.crt"
pip_conf() { "$PY" -m pip config get "$1" 2>/dev/null || true; }
find_links="${PIP_FIND_LINKS:-$(pip_conf global.find-links)}"
for dir in $find_links; do
    dir="${dir#file://}"
    [[ -d "$dir" ]] || continue
    for whl in "$dir"/torch-"$TORCH_VERSION"*-cp311-*linux*x86_64.whl; do
        [[ -f "$whl" ]] || continue
        mkdir -p "$extra/wheels"
        ln -f "$whl" "$extra/wheels/" 2>/dev/null || cp "$whl" "$extra/wheels/"
        log "using the host's torch wheel $(basename "$whl")"
    done
done
cert="${PIP_CERT:-$(pip_conf global.cert)}"
if [[ -z "$cert" && -f /etc/ssl/certs/ca-certificates.crt ]]; then cert=/etc/ssl/certs/ca-certificates.crt; fi
if [[ -n "$cert" && -f "$cert" ]]; then cp "$cert" "$extra/ca-certificates.crt"; fi

build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_VERSION=$TORCH_VERSION")
if [[ -n "${PIP_INDEX_URL:-}" ]]; then build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"); fi
log "building $PINFER_IMAGE on $BASE_IMAGE"
start=$SECONDS
build_log="$(mktemp -t pinfer-smoke-build-XXXXXX.log)"
previous="$(docker image inspect -f '{{.Id}}' "$PINFER_IMAGE" 2>/dev/null || true)"
if ! docker build -f deploy/Dockerfile "${build_args[@]}" -t "$PINFER_IMAGE" . >"$build_log" 2>&1; then
    log "image build failed; last lines of its log:"
    tail -n 40 "$build_log" >&2
    rm -rf "$extra/wheels" "$extra/ca-certificates.crt" "$build_log"
    exit 1
fi
rm -rf "$extra/wheels" "$extra/ca-certificates.crt" "$build_log"
log "image built in $((SECONDS - start)) s"
# The image this build replaced (and its layers no other image uses) would only pile up on disk.
if [[ -n "$previous" && "$previous" != "$(docker image inspect -f '{{.Id}}' "$PINFER_IMAGE")" ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi

# --- the stack -------------------------------------------------------------------------------------
export PINFER_STATE="$(mktemp -d -t pinfer-smoke-XXXXXX)"  # setup (root in its container) fills it
client_dir="$(mktemp -d -t pinfer-smoke-client-XXXXXX)"  # 0700: the token copy lives here
cleanup() {
    rc=$?
    if ((rc != 0)); then
        log "failed; last lines of the stack's logs:"
        compose logs --no-color --tail 40 >&2 2>&1 || true
    fi
    compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    # Keys, shares and token belong to root and uid 10001: a non-root caller removes them through a container.
    docker run --rm --user 0 -v "$PINFER_STATE:/state" --entrypoint rm "$PINFER_IMAGE" -rf /state/keys \
        /state/models /state/client.token /state/tokens.sha256 >/dev/null 2>&1 || true
    rm -rf "$PINFER_STATE" "$client_dir"
    if [[ "${PINFER_SMOKE_KEEP_IMAGE:-1}" == 0 ]]; then docker image rm "$PINFER_IMAGE" >/dev/null 2>&1 || true; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # a stopped run still tears the stack down

log "starting the stack"
start=$SECONDS
compose up -d
# `up --wait` is Compose v2 only: wait for the orchestrator's health check here instead.
orchestrator="$(compose ps -q orchestrator)"
for _ in $(seq 1 120); do
    health="$(docker inspect -f '{{.State.Health.Status}}' "$orchestrator" 2>/dev/null || echo gone)"
    [[ "$health" == healthy ]] && break
    sleep 1
done
if [[ "$health" != healthy ]]; then log "orchestrator not healthy ($health)"; exit 1; fi
log "stack healthy in $((SECONDS - start)) s"

# The token file is root's, 0600: copy it for this client (which need not be root), readable by it alone.
(umask 077; docker run --rm --user 0 -v "$PINFER_STATE:/state:ro" --entrypoint cat "$PINFER_IMAGE" /state/client.token \
    >"$client_dir/token")
cp "$PINFER_STATE/keys/ca/ca.crt" "$client_dir/ca.crt"

# Both runs print JSON with the generated token ids and text; compare both (a tiny random model's
# text may be short or unprintable, its token ids are not).
result_of() { "$PY" -c 'import json, sys; r = json.load(sys.stdin); print(json.dumps([r["tokens"], r["text"]]))'; }
log "local reference run"
expected="$("$PY" -m pinfer.cli generate --model "$PINFER_MODEL" --prompt "$PROMPT" --raw \
    --max-new-tokens "$TOKENS" --json | result_of)"
log "generation through the orchestrator"
actual="$("$PY" -m pinfer.cli generate --endpoint "127.0.0.1:$PINFER_PORT" \
    --token-file "$client_dir/token" --ca "$client_dir/ca.crt" \
    --model "$PINFER_MODEL" --prompt "$PROMPT" --raw --max-new-tokens "$TOKENS" --json | result_of)"

if [[ "$actual" != "$expected" ]]; then
    log "FAILED: service gave $actual, local run $expected (token ids, text)"
    exit 1
fi
echo "smoke: OK: $TOKENS tokens of $PINFER_MODEL through the compose stack equal the local run's: $actual"
