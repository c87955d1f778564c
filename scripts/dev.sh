#!/usr/bin/env bash
# One entry point for development set-up:
#   scripts/dev.sh serve [vllm-mlx serve args...]   install what serving needs (if needed) and serve;
#                                                   no model = demo model
#   scripts/dev.sh test  [pytest args...]           install everything (if needed) and run the test suite
#   scripts/dev.sh install serve|full               install only: text serving, or every extra as well
# Needs only Python >= 3.11. Dependencies are installed into .venv from hash-pinned locks:
#   requirements-serve.lock  the base dependencies alone (text serving: a light, quick install)
#   requirements.lock        base + every extra (vision, embeddings, audio, mcp, bench plots) + test tools
# Both pin shared packages to the same versions, so `test` on a serve-only venv only adds packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

fresh() {  # fresh STAMP LOCK...: the stamp exists and is newer than every lock and pyproject.toml
    local stamp=$1; shift
    [ -f "$stamp" ] || return 1
    for f in "$@" pyproject.toml; do
        [ "$f" -nt "$stamp" ] && return 1
    done
    return 0
}

install() {  # install serve|full
    local level=$1 lock
    case "$level" in
        serve) lock=requirements-serve.lock ;;
        full) lock=requirements.lock ;;
        *) echo "scripts/dev.sh install: serve or full, not '$level'" >&2; exit 2 ;;
    esac
    # A full install covers serving too (same pins); a serve install leaves the extras to `full`.
    if fresh .venv/.installed-full requirements.lock requirements-serve.lock \
            || { [ "$level" = serve ] && fresh .venv/.installed-serve requirements-serve.lock; }; then
        return 0
    fi
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    local started=$SECONDS
    echo "installing the $level dependencies into .venv from $lock ..." >&2
    # --no-compile: no bytecode for the thousands of modules never imported (a third of the venv);
    # Python writes it for those that are, on first import
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q --no-compile --require-hashes -r "$lock"
    .venv/bin/python -m pip install -q --no-compile --no-deps -e .
    touch ".venv/.installed-$level"
    echo "installed in $((SECONDS - started)) s ($(du -sh .venv | cut -f1) in .venv)" >&2
}

blas_note() {
    if ! .venv/bin/python -c "import sys, vllm_mlx; sys.exit(vllm_mlx.BLAS_STATUS.path is None)" 2>/dev/null \
            && [ "$(uname -s)" = Linux ]; then
        echo "note: OpenBLAS not found; CPU inference will be several times slower. Install it with:" >&2
        echo "      sudo apt-get install libopenblas0-pthread" >&2
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    serve)
        install serve
        blas_note
        exec .venv/bin/vllm-mlx serve "$@"
        ;;
    test)
        install full
        blas_note
        export HF_HUB_OFFLINE=1
        export HF_HOME=${HF_HOME:-$PWD/.hf-cache}
        mkdir -p "$HF_HOME"
        exec .venv/bin/python -m pytest "$@"
        ;;
    install)
        install "${1:-full}"
        ;;
    *)
        echo "usage: scripts/dev.sh serve [MODEL] [options] | scripts/dev.sh test [pytest options]" \
             "| scripts/dev.sh install serve|full" >&2
        exit 2
        ;;
esac
