#!/usr/bin/env bash
# scripts/serve_profile.sh PROFILE MODEL [serve flags...]
# The launcher of vllm-mlx 0.2.x, as a thin wrapper: `vllm-mlx serve MODEL --profile PROFILE [flags...]`.
# Profiles: `vllm-mlx profiles` (text-default, text-deterministic, text-tools, text-json, mllm-default,
# mllm-correctness). Flags given after MODEL override the profile. VLLM_MLX: the command to run
# (default: vllm-mlx on PATH, else .venv/bin/vllm-mlx of this checkout).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: scripts/serve_profile.sh PROFILE MODEL [vllm-mlx serve flags...]  (profiles: vllm-mlx profiles)" >&2
    exit 2
fi
profile=$1 model=$2
shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
cmd=${VLLM_MLX:-$(command -v vllm-mlx || echo "$here/.venv/bin/vllm-mlx")}
exec "$cmd" serve "$model" --profile "$profile" "$@"
