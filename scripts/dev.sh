#!/usr/bin/env bash
# One entry point for development set-up:
#   scripts/dev.sh serve [vllm-mlx serve args...]   install (if needed) and serve; no model = demo model
#   scripts/dev.sh test  [pytest args...]           install (if needed) and run the test suite
# Needs only Python >= 3.11. Dependencies are installed into .venv from the hash-pinned requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.vllm-mlx-installed
if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps -e .
    touch "$stamp"
fi

if ! .venv/bin/python -c "import sys, vllm_mlx; sys.exit(vllm_mlx.BLAS_STATUS.path is None)" 2>/dev/null \
        && [ "$(uname -s)" = Linux ]; then
    echo "note: OpenBLAS not found; CPU inference will be several times slower. Install it with:" >&2
    echo "      sudo apt-get install libopenblas0-pthread" >&2
fi

cmd=${1:-}
shift || true
case "$cmd" in
    serve)
        exec .venv/bin/vllm-mlx serve "$@"
        ;;
    test)
        export HF_HUB_OFFLINE=1
        export HF_HOME=${HF_HOME:-$PWD/.hf-cache}
        mkdir -p "$HF_HOME"
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        echo "usage: scripts/dev.sh serve [MODEL] [options] | scripts/dev.sh test [pytest options]" >&2
        exit 2
        ;;
esac
