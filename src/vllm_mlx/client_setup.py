"""What to paste on the client side for each `--client` profile: base URL, key, model id, env or config."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .profiles import ClientProfile

KEY_PLACEHOLDER = "<your --api-key>"
NO_KEY = "unused"  # clients insist on some key; the server ignores it when it has none


@dataclass(frozen=True)
class Endpoint:
    server_url: str  # http://HOST:PORT, no trailing slash
    model: str
    auth: bool  # the server requires an API key
    context: int | None = None  # context budget when known before loading
    max_output: int = 4096

    @property
    def key(self) -> str:
        return KEY_PLACEHOLDER if self.auth else NO_KEY

    @property
    def v1(self) -> str:
        return self.server_url + "/v1"


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard bind is reached through loopback)."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _claude_code(e: Endpoint) -> str:
    key_var = "ANTHROPIC_API_KEY"
    return f"""Environment for Claude Code (base URL WITHOUT /v1: Claude Code appends /v1/messages itself):
  export ANTHROPIC_BASE_URL={e.server_url}
  export {key_var}={e.key}
  export ANTHROPIC_MODEL={e.model}
  export ANTHROPIC_SMALL_FAST_MODEL={e.model}
  export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
then run:  claude --model {e.model}
(ANTHROPIC_AUTH_TOKEN instead of ANTHROPIC_API_KEY sends the key as a Bearer token; both work.)"""


def _codex(e: Endpoint) -> str:
    return f"""~/.codex/config.toml (or $CODEX_HOME/config.toml); Codex speaks only the Responses API:
  model = "{e.model}"
  model_provider = "vllm-mlx"

  [model_providers.vllm-mlx]
  name = "vllm-mlx"
  base_url = "{e.v1}"
  env_key = "VLLM_MLX_API_KEY"
  wire_api = "responses"
then, in the shell:
  export VLLM_MLX_API_KEY={e.key}
  codex"""


def _opencode(e: Endpoint) -> str:
    context = e.context or 32768
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"vllm-mlx": {
            "npm": "@ai-sdk/openai-compatible", "name": "vllm-mlx",
            "options": {"baseURL": e.v1, "apiKey": e.key},
            "models": {e.model: {"name": e.model, "tool_call": True,
                                 "limit": {"context": context, "output": min(e.max_output, context)}}}}},
        "model": f"vllm-mlx/{e.model}",
        "small_model": f"vllm-mlx/{e.model}",
    }
    return "opencode.json (in the project folder or ~/.config/opencode/):\n" + _indent(json.dumps(config, indent=2))


def _open_webui(e: Endpoint) -> str:
    return f"""Environment for Open WebUI (its backend calls this server), or Admin Panel > Settings > Connections:
  OPENAI_API_BASE_URL={e.v1}
  OPENAI_API_KEY={e.key}
  ENABLE_OLLAMA_API=False
Open WebUI in Docker reaches the host as http://host.docker.internal:PORT/v1; then serve with
--host 0.0.0.0 (and an --api-key)."""


def _continue(e: Endpoint) -> str:
    return f"""~/.continue/config.yaml:
  name: vllm-mlx
  version: 1.0.0
  schema: v1
  models:
    - name: {e.model}
      provider: openai
      model: {e.model}
      apiBase: {e.v1}
      apiKey: {e.key}
      roles: [chat, edit, apply]
      capabilities: [tool_use]"""


def _qwen_code(e: Endpoint) -> str:
    return f"""Environment for Qwen Code (or the flags --auth-type openai --openai-base-url ... --openai-api-key ...):
  export OPENAI_BASE_URL={e.v1}
  export OPENAI_API_KEY={e.key}
  export OPENAI_MODEL={e.model}
then run:  qwen --auth-type openai -m {e.model}"""


def _goose(e: Endpoint) -> str:
    return f"""Environment for goose (OpenAI provider; the host is given without /v1):
  export GOOSE_PROVIDER=openai
  export OPENAI_HOST={e.server_url}
  export OPENAI_API_KEY={e.key}
  export GOOSE_MODEL={e.model}"""


def _gui(app: str, where: str, url: str, e: Endpoint) -> str:
    return f"""{app}: {where}
  API host / base URL: {url}
  API key:             {e.key}
  model:               {e.model}""" + (f"\n  context window:      {e.context}" if e.context else "")


def _anythingllm(e: Endpoint) -> str:
    return _gui("AnythingLLM", "Settings > LLM Preference > Generic OpenAI", e.v1, e) + f"""
or in its .env:
  LLM_PROVIDER=generic-openai
  GENERIC_OPEN_AI_BASE_PATH={e.v1}
  GENERIC_OPEN_AI_MODEL_PREF={e.model}
  GENERIC_OPEN_AI_API_KEY={e.key}
  GENERIC_OPEN_AI_MODEL_TOKEN_LIMIT={e.context or 8192}
  GENERIC_OPEN_AI_MAX_TOKENS={e.max_output}"""


def _librechat(e: Endpoint) -> str:
    return f"""librechat.yaml:
  endpoints:
    custom:
      - name: "vllm-mlx"
        apiKey: "{e.key}"
        baseURL: "{e.v1}"
        models:
          default: ["{e.model}"]
          fetch: true
        titleConvo: true
        titleModel: "{e.model}"
(LibreChat in Docker reaches the host as http://host.docker.internal:PORT/v1.)"""


def _generic(e: Endpoint) -> str:
    return f"""Any OpenAI client:
  export OPENAI_BASE_URL={e.v1}
  export OPENAI_API_KEY={e.key}
  model id: {e.model}
Python:  openai.OpenAI(base_url="{e.v1}", api_key="{e.key}")
curl:    curl {e.v1}/chat/completions -H "Authorization: Bearer {e.key}" -H "Content-Type: application/json" \\
           -d '{{"model": "{e.model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'
llm (extra-openai-models.yaml in the llm user folder, then `llm -m vllm-mlx "Hello"`):
  - model_id: vllm-mlx
    model_name: {e.model}
    api_base: "{e.v1}"
    supports_tools: true"""


_RENDERERS = {
    "claude-code": _claude_code,
    "codex": _codex,
    "opencode": _opencode,
    "open-webui": _open_webui,
    "continue": _continue,
    "qwen-code": _qwen_code,
    "goose": _goose,
    "cherry-studio": lambda e: _gui("Cherry Studio", "Settings > Model Provider > Add, type OpenAI "
                                    "(it appends /v1 itself)", e.server_url, e),
    "chatbox": lambda e: _gui("Chatbox", "Settings > Model Provider > Add, 'OpenAI API Compatible'", e.v1, e),
    "jan": lambda e: _gui("Jan", "Settings > Model Providers > add an OpenAI-compatible provider", e.v1, e),
    "anythingllm": _anythingllm,
    "librechat": _librechat,
    "generic-openai": _generic,
}


def client_instructions(profile: ClientProfile, endpoint: Endpoint) -> str:
    body = _RENDERERS[profile.name](endpoint)
    key_note = (f"\n{KEY_PLACEHOLDER} is the key the server was started with (--api-key or $VLLM_MLX_API_KEY)."
                if endpoint.auth else "\nThe server has no API key: any key works.")
    return f"=== client settings for {profile.name} ({profile.summary}) ===\n{body}{key_note}\n"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
