#!/usr/bin/env bash
# Install the real client programs that tests/clients drives against the server.
#
#   scripts/install-clients.sh            # light clients: npm CLIs, llm, aider
#   scripts/install-clients.sh --heavy    # also Open WebUI (own venv, several GB) and Chromium (apt, as root)
#
# Everything goes under .clients/ in the repository (git-ignored), never into the project's venv:
#   .clients/npm/node_modules/.bin/  claude, codex, opencode, cn, qwen
#   .clients/llm/bin/llm             (own venv)
#   .clients/aider/bin/aider         (own venv: aider pins many packages)
#   .clients/open-webui/bin/open-webui  (own venv, --heavy; made with uv from PATH or .clients/uv)
# The tests look for each client in these folders first, then on PATH. strace (apt, as root) lets
# them watch the connections of clients that ignore proxy variables.
set -euo pipefail

HEAVY=0
for arg in "$@"; do
  case "$arg" in
    --heavy) HEAVY=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.clients"
mkdir -p "$DEST"
PYTHON="${CLIENTS_PYTHON:-python3}"

step() { printf '\n== %s\n' "$*"; }

step "npm clients -> $DEST/npm"
npm install --prefix "$DEST/npm" --no-fund --no-audit \
  @anthropic-ai/claude-code @openai/codex opencode-ai @continuedev/cli @qwen-code/qwen-code

venv_install() {  # venv_install NAME PACKAGE...
  local name="$1"; shift
  step "$name -> $DEST/$name"
  [ -x "$DEST/$name/bin/python" ] || "$PYTHON" -m venv "$DEST/$name"
  "$DEST/$name/bin/python" -m pip install --quiet --upgrade "$@"
}
venv_install llm llm
venv_install aider aider-chat

if [ "$HEAVY" = 1 ]; then
  step "open-webui -> $DEST/open-webui (uv)"
  # uv from PATH, else into a venv of its own under .clients (never --user: ~/.local/bin is often
  # not on PATH, and the call is made by its full path either way)
  UV="$(command -v uv || true)"
  if [ -z "$UV" ]; then
    [ -x "$DEST/uv/bin/uv" ] || { "$PYTHON" -m venv "$DEST/uv" && "$DEST/uv/bin/python" -m pip install --quiet uv; }
    UV="$DEST/uv/bin/uv"
  fi
  # Open WebUI supports Python 3.11 and 3.12
  [ -x "$DEST/open-webui/bin/python" ] || "$UV" venv --python "${OPEN_WEBUI_PYTHON:-3.11}" "$DEST/open-webui"
  VIRTUAL_ENV="$DEST/open-webui" "$UV" pip install open-webui
  if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      step "chromium (apt)"
      apt-get update && apt-get install -y chromium
    else
      echo "chromium is not installed; run as root or install it yourself (apt-get install chromium)" >&2
    fi
  fi
fi
if ! command -v strace >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "strace (apt)"
  apt-get install -y strace || echo "strace not installed: the client tests will rely on the proxy check alone" >&2
fi

step "installed versions"
for bin in "$DEST"/npm/node_modules/.bin/{claude,codex,opencode,cn,qwen} "$DEST"/llm/bin/llm "$DEST"/aider/bin/aider; do
  [ -x "$bin" ] && printf '%-12s %s\n' "$(basename "$bin")" "$("$bin" --version 2>/dev/null | head -n1)"
done
[ -x "$DEST/open-webui/bin/open-webui" ] && echo "open-webui   $("$DEST/open-webui/bin/python" -c 'import importlib.metadata as m; print(m.version("open-webui"))')"
exit 0
