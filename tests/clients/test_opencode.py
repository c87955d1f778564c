"""opencode (`opencode run`) with each of its three provider kinds: chat completions
(@ai-sdk/openai-compatible), Anthropic Messages (@ai-sdk/anthropic) and Responses (@ai-sdk/openai).
Its bash tool runs the marker command; the result comes back in the next request.
Profile: `vllm-mlx serve MODEL --client opencode`."""

from __future__ import annotations

import json

import pytest

from .client_support import (PROMPT, check_agent_round_trip, check_offline, client_version, find_client, run_client,
                             sandbox_env)

OPENCODE = find_client("opencode")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(OPENCODE is None, reason="opencode is not installed (scripts/install-clients.sh)")]

PROVIDERS = {  # provider id -> (AI SDK package, the route it must use)
    "local": ("@ai-sdk/openai-compatible", "/v1/chat/completions"),
    "localant": ("@ai-sdk/anthropic", "/v1/messages"),
    "localresp": ("@ai-sdk/openai", "/v1/responses"),
}
QUIET = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1",
         "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_SHARE": "1"}


def opencode_config(base_url: str, api_key: str, model: str, provider: str) -> dict:
    limits = {"context": 32768, "output": 4096}
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            pid: {"npm": package, "name": f"vllm-mlx ({pid})",
                  "options": {"baseURL": f"{base_url}/v1", "apiKey": api_key},
                  "models": {model: {"name": model, "tool_call": True, "limit": limits}}}
            for pid, (package, _) in PROVIDERS.items()
        },
        "model": f"{provider}/{model}",
        "small_model": f"{provider}/{model}",  # titles etc. over the same protocol
    }


@pytest.mark.parametrize("provider,family", [("local", "qwen3"), ("localant", "qwen3"), ("localresp", "llama")])
def test_opencode_bash_tool_round_trip(agent_server, proxy, record, tmp_path, provider, family):
    server = agent_server(family)
    package, route = PROVIDERS[provider]
    row = record(client="opencode", variant=f"{package}, {family}", version=client_version(OPENCODE),
                 family=server.parser)
    work = tmp_path / "work"
    work.mkdir()
    config = opencode_config(server.base_url, server.api_key, server.model, provider)
    (work / "opencode.json").write_text(json.dumps(config))
    env = sandbox_env(tmp_path / "home", proxy, **QUIET)
    with server.watch() as seen:
        run = run_client([OPENCODE, "run", "--pure", "-m", f"{provider}/{server.model}", PROMPT, "--format", "json"],
                         env=env, cwd=work)
    evidence = seen[0]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    texts = [e["part"]["text"] for e in events if e.get("type") == "text" and "part" in e]
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    # opencode tries to npm-install its plugin package into the config folder in the background;
    # the proxy refuses it and the run does not need it
    row["refused_egress"] = check_agent_round_trip(run, evidence, proxy, "\n".join(texts) or run.stdout,
                                                   refused_ok=("registry.npmjs.org",))
    tools = [e["part"] for e in events if e.get("type") == "tool_use"]
    assert tools and tools[0]["tool"] == "bash" and "MARKER_42" in json.dumps(tools[0]["state"])
    assert evidence.protocols() == [route]
    row.update(text=True, tools=True)


def test_opencode_responses_provider_shows_reasoning(start_server, models_dir, proxy, record, tmp_path):
    """@ai-sdk/openai reads reasoning from the summary parts of reasoning items: with the model's
    ``reasoningSummary`` option opencode asks for them (reasoning.summary), and `--thinking` prints them."""
    from vllm_mlx_testing import build_scripted_model

    thought = "The user wants me to ponder the marker."
    rules = [{"if_contains": "title generator", "reply": "Pondering"},
             {"if_contains": "Think it over", "reply": f"<think>\n{thought}\n</think>\n\nI thought it over: 42."}]
    path = build_scripted_model(models_dir / "opencode-reasoning", rules, "Hello.", "qwen3",
                                max_position_embeddings=65536)
    log = tmp_path / "requests.jsonl"
    server = start_server(path, "--trust-remote-code", "--served-model-name", "scripted", "--api-key", "k",
                          "--request-log", log)
    row = record(client="opencode", variant="@ai-sdk/openai, reasoning summaries", version=client_version(OPENCODE),
                 family="hermes")
    work = tmp_path / "work"
    work.mkdir()
    config = opencode_config(server.base_url, "k", "scripted", "localresp")
    model = config["provider"]["localresp"]["models"]["scripted"]
    model.update(reasoning=True, options={"reasoningSummary": "auto"})
    (work / "opencode.json").write_text(json.dumps(config))
    run = run_client([OPENCODE, "run", "--pure", "-m", "localresp/scripted", "Think it over.", "--format", "json",
                      "--thinking"], env=sandbox_env(tmp_path / "home", proxy, **QUIET), cwd=work)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    reasoning = [e["part"]["text"] for e in events if e.get("type") == "reasoning" and e["part"].get("text")]
    texts = [e["part"]["text"] for e in events if e.get("type") == "text"]
    bodies = [json.loads(line).get("body") for line in log.read_text().splitlines()]
    asked = [b["reasoning"] for b in bodies if isinstance(b, dict) and b.get("tools") and b.get("reasoning")]
    row.update(client_seconds=round(run.seconds, 1), protocol="/v1/responses", streaming=True, system_prompt=True,
               auth=["bearer"], text=True, checked="reasoning summary shown as opencode's reasoning part")
    assert run.returncode == 0, run.tail()
    assert asked and asked[0].get("summary") == "auto"
    assert reasoning == [thought] and texts[-1] == "I thought it over: 42.", run.tail()
    row["refused_egress"] = check_offline(run, proxy, refused_ok=("registry.npmjs.org",))
