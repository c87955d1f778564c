"""Built-in serving profiles (`--profile`) and client profiles (`--client`).

A profile is data: settings keyed by the names of the option table (vllm_mlx/options/table.py, e.g.
``tool_call_parser`` for ``--tool-call-parser``), typed and checked by the same rules as a config
file when the profile is used, so a typo in a profile fails loudly. Precedence, lowest first:
defaults < --profile < --client < --config FILE < command-line flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    settings: dict = field(default_factory=dict)


SERVING_PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("text-default", "the built-in defaults, spelled out: output parsers detected from the chat template, "
            "prefix cache on, OpenAI sampling defaults",
            {"tool_call_parser": "auto", "reasoning_parser": "auto", "prefix_cache": True}),
    Profile("text-deterministic", "identical requests give identical output under any load (rows computed at "
            "batch size 1) and requests without a temperature decode greedily",
            {"deterministic": True, "default_temperature": 0.0, "default_top_p": 1.0, "default_top_k": 0}),
    Profile("text-tools", "agents and tool calling: parsers detected, room for long tool-call turns, "
            "a cooler default temperature",
            {"tool_call_parser": "auto", "reasoning_parser": "auto", "enable_auto_tool_choice": True,
             "max_tokens": 4096, "default_temperature": 0.6}),
    Profile("text-json", "JSON / structured-output workloads: greedy by default, reasoning text not split off, "
            "room for large objects",
            {"default_temperature": 0.0, "reasoning_parser": "none", "max_tokens": 2048}),
    Profile("mllm-default", "a multimodal (vision) model served with the defaults",
            {"mllm": True, "tool_call_parser": "auto", "reasoning_parser": "auto"}),
    Profile("mllm-correctness", "a multimodal model with the batch-divergence monitor on: if concurrent "
            "greedy output stops agreeing with serial output, generation is serialized",
            {"mllm": True, "batch_divergence_monitor": True, "batch_divergence_action": "serialize"}),
)}


@dataclass(frozen=True)
class ClientProfile(Profile):
    api: str = "chat"  # the API the client speaks: chat, responses or anthropic
    base_url_suffix: str = "/v1"  # what the client's base URL ends with ("" = the bare server URL)
    verified: bool = False  # driven end to end against this server (see docs/operator-guide.md)


# Every client gets parsers detected and any model id accepted (clients send their own ids, e.g.
# Claude Code's small/fast model); the rest is what each client lacks.
_AGENT = {"tool_call_parser": "auto", "reasoning_parser": "auto", "enable_auto_tool_choice": True,
          "strict_model_id": False}
_CHAT_UI = {**_AGENT, "max_tokens": 2048}  # chat apps often send no max_tokens; 512 cuts answers short

CLIENT_PROFILES: dict[str, ClientProfile] = {p.name: p for p in (
    ClientProfile("claude-code", "Claude Code over the Anthropic Messages API (base URL without /v1)",
                  _AGENT, api="anthropic", base_url_suffix="", verified=True),
    ClientProfile("codex", "Codex CLI over the Responses API; Codex sends no max_output_tokens, so the "
                  "server default is raised", {**_AGENT, "max_tokens": 8192}, api="responses", verified=True),
    ClientProfile("opencode", "opencode with an OpenAI-compatible provider", {**_AGENT, "max_tokens": 4096},
                  verified=True),
    ClientProfile("open-webui", "Open WebUI (its backend calls the server; it sends no max_tokens)", _CHAT_UI,
                  verified=True),
    ClientProfile("continue", "Continue (VS Code / JetBrains / cn CLI), provider openai",
                  {**_AGENT, "max_tokens": 4096}, verified=True),
    ClientProfile("qwen-code", "Qwen Code with --auth-type openai", {**_AGENT, "max_tokens": 8192}, verified=True),
    ClientProfile("goose", "goose with the OpenAI provider (host without /v1)", {**_AGENT, "max_tokens": 4096},
                  base_url_suffix=""),
    ClientProfile("cherry-studio", "Cherry Studio, provider type OpenAI (API host without /v1)", _CHAT_UI,
                  base_url_suffix=""),
    ClientProfile("chatbox", "Chatbox, provider 'OpenAI API Compatible'", _CHAT_UI),
    ClientProfile("jan", "Jan, an OpenAI-compatible remote provider", _CHAT_UI),
    ClientProfile("anythingllm", "AnythingLLM, LLM provider 'Generic OpenAI'", _CHAT_UI),
    ClientProfile("librechat", "LibreChat, a custom endpoint in librechat.yaml", _CHAT_UI),
    ClientProfile("generic-openai", "any OpenAI SDK or tool (also the llm CLI and aider)", _CHAT_UI,
                  verified=True),
)}


# Client profile names of vllm-mlx 0.2.x (scripts/serve_client_profile.sh there) -> the profile here. Tool
# calling needs no switch here (goose has it), and vision is detected from the model (the -mllm names).
CLIENT_ALIASES: Mapping[str, str] = MappingProxyType({
    "goose-text": "goose", "goose-tools": "goose", "open-webui-text": "open-webui", "open-webui-mllm": "open-webui",
    "generic-mllm": "generic-openai",
})


class ProfileError(ValueError):
    pass


def serving_profile(name: str) -> Profile:
    try:
        return SERVING_PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown serving profile {name!r}; choose one of: {', '.join(SERVING_PROFILES)}")


def client_profile(name: str) -> ClientProfile:
    try:
        return CLIENT_PROFILES[CLIENT_ALIASES.get(name, name)]
    except KeyError:
        raise ProfileError(f"unknown client profile {name!r}; choose one of: {', '.join(CLIENT_PROFILES)}")


def describe_settings(settings: dict) -> str:
    """`key=value` pairs, keyed as in a --config file (how `vllm-mlx profiles` shows a profile)."""
    def show(value):
        return str(value).lower() if isinstance(value, bool) else str(value)

    return ", ".join(f"{k}={show(v)}" for k, v in settings.items()) or "(nothing: the defaults)"


def list_profiles() -> str:
    lines = ["Serving profiles (--profile NAME):"]
    for p in SERVING_PROFILES.values():
        lines += [f"  {p.name}", f"      {p.summary}", f"      sets: {describe_settings(p.settings)}"]
    lines += ["", "Client profiles (--client NAME; prints the client-side settings at startup):"]
    for c in CLIENT_PROFILES.values():
        note = "" if c.verified else "  [settings from the client's documentation; not driven in tests here]"
        lines += [f"  {c.name}  ({c.api} API, base URL {'ends in /v1' if c.base_url_suffix else 'without /v1'})"
                  f"{note}", f"      {c.summary}", f"      sets: {describe_settings(c.settings)}"]
    lines += ["", "Precedence, highest first: command-line flags > --config FILE > --client > --profile > defaults.",
              "`vllm-mlx serve ... --print-config` shows the resolved settings and where each came from."]
    return "\n".join(lines)
