#!/usr/bin/env bash
# scripts/serve_client_profile.sh CLIENT MODEL [serve flags...]
# The launcher of vllm-mlx 0.2.x, as a thin wrapper: `vllm-mlx serve MODEL --client CLIENT [flags...]`.
# Client profiles: `vllm-mlx profiles` (claude-code, codex, goose, open-webui, ...; the names of 0.2.x such as
# goose-text or open-webui-text are mapped). The server prints the client-side settings at startup.
# Unlike 0.2.x, no API key is invented: pass --api-key KEY (or set VLLM_MLX_API_KEY) to require one.
# VLLM_MLX: the command to run (default: vllm-mlx on PATH, else .venv/bin/vllm-mlx of this checkout).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: scripts/serve_client_profile.sh CLIENT MODEL [vllm-mlx serve flags...]  (clients: vllm-mlx profiles)" >&2
    exit 2
fi
client=$1 model=$2
shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
cmd=${VLLM_MLX:-$(command -v vllm-mlx || echo "$here/.venv/bin/vllm-mlx")}
exec "$cmd" serve "$model" --client "$client" "$@"
