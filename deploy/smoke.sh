#!/usr/bin/env bash
# Smoke test of the docker-compose deployment: build the image, bring orchestrator, two parties and
# the dealer up, run one private generation through the orchestrator with this checkout's client SDK,
# check that its text equals the local run's (`pinfer generate` without --endpoint), tear down.
#
# Environment: BASE_IMAGE (Dockerfile base, default python:3.11-slim), PINFER_MODEL (default
# tiny-llama), PINFER_PORT (host port of the orchestrator, default 17000), PYTHON (client
# interpreter, default .venv/bin/python), PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS
# (passed to the image build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-.venv/bin/python}"
PROMPT="${PINFER_PROMPT:-The quick brown fox}"
TOKENS=4
export PINFER_MODEL="${PINFER_MODEL:-tiny-llama}"
export PINFER_PORT="${PINFER_PORT:-17000}"
export PINFER_IMAGE="pinfer:smoke"
export PINFER_STATE="$(mktemp -d -t pinfer-smoke-XXXXXX)"
chmod 0777 "$PINFER_STATE"  # the containers' unprivileged user writes keys and shares here

if docker compose version >/dev/null 2>&1; then
    compose() { docker compose -f deploy/docker-compose.yml -p pinfer-smoke "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
    compose() { docker-compose -f deploy/docker-compose.yml -p pinfer-smoke "$@"; }
else
    echo "smoke: neither 'docker compose' nor 'docker-compose' is available" >&2
    exit 1
fi
cleanup() {
    compose logs --no-color >"$PINFER_STATE/compose.log" 2>&1 || true
    compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    docker run --rm -v "$PINFER_STATE:/state" --entrypoint rm "$PINFER_IMAGE" -rf /state/keys /state/models \
        >/dev/null 2>&1 || true
    rm -rf "$PINFER_STATE"
}
trap cleanup EXIT

build_args=(--build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}")
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS; do
    if [[ -n "${!name:-}" ]]; then build_args+=(--build-arg "$name=${!name}"); fi
done
echo "smoke: building $PINFER_IMAGE" >&2
docker build -f deploy/Dockerfile "${build_args[@]}" -t "$PINFER_IMAGE" .

echo "smoke: starting the stack" >&2
compose up -d --wait

text_of() { "$PY" -c 'import json, sys; print(json.load(sys.stdin)["text"])'; }
echo "smoke: local reference run" >&2
expected="$("$PY" -m pinfer.cli generate --model "$PINFER_MODEL" --prompt "$PROMPT" --raw \
    --max-new-tokens "$TOKENS" --json | text_of)"
echo "smoke: generation through the orchestrator" >&2
actual="$("$PY" -m pinfer.cli generate --endpoint "127.0.0.1:$PINFER_PORT" \
    --token-file "$PINFER_STATE/client.token" --ca "$PINFER_STATE/keys/ca/ca.crt" \
    --model "$PINFER_MODEL" --prompt "$PROMPT" --raw --max-new-tokens "$TOKENS" --json | text_of)"

if [[ "$actual" != "$expected" ]]; then
    echo "smoke: FAILED: service gave ${actual@Q}, local run ${expected@Q}" >&2
    exit 1
fi
echo "smoke: OK (${actual@Q})"
