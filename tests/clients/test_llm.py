"""llm (Simon Willison's CLI, OpenAI-compatible model from extra-openai-models.yaml) over chat
completions, with a Python shell function given by --functions: llm runs the tool call and sends
the result back.  Profile: `vllm-mlx serve MODEL --client generic-openai`."""

from __future__ import annotations

import json

import pytest

from .client_support import (PROMPT, check_agent_round_trip, check_offline, client_version, find_client,
                            run_client, sandbox_env)

LLM = find_client("llm")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(LLM is None, reason="llm is not installed (scripts/install-clients.sh)")]

MODELS = """- model_id: local
  model_name: MODEL
  api_base: "BASE/v1"
  api_key_name: local
  supports_tools: true
"""
FUNCTIONS = '''
def run_shell_command(command: str) -> str:
    "Run a shell command and return what it printed."
    import subprocess
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    return done.stdout + done.stderr
'''


@pytest.mark.parametrize("family", ["llama"])
def test_llm_functions_tool_round_trip(agent_server, proxy, record, tmp_path, family):
    server = agent_server(family)
    row = record(client="llm", variant="--functions", version=client_version(LLM), family=server.parser)
    user_dir, work = tmp_path / "llm", tmp_path / "work"
    user_dir.mkdir()
    work.mkdir()
    (user_dir / "extra-openai-models.yaml").write_text(
        MODELS.replace("MODEL", server.model).replace("BASE", server.base_url))
    (user_dir / "keys.json").write_text(json.dumps({"local": server.api_key}))
    env = sandbox_env(tmp_path / "home", proxy, LLM_USER_PATH=str(user_dir))
    with server.watch() as seen:
        run = run_client([LLM, "-m", "local", "--functions", FUNCTIONS, "--no-log", PROMPT], env=env, cwd=work)
    evidence = seen[0]
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    row["refused_egress"] = check_agent_round_trip(run, evidence, proxy, run.stdout)
    assert evidence.protocols() == ["/v1/chat/completions"]
    assert any("run_shell_command" in r["body"]["tools"] for r in evidence.generation_requests())
    row.update(text=True, tools=True)


def test_llm_plain_text_with_system_prompt(agent_server, proxy, record, tmp_path):
    server = agent_server("qwen3")
    row = record(client="llm", variant="text, system prompt", version=client_version(LLM), family=server.parser)
    user_dir = tmp_path / "llm"
    user_dir.mkdir()
    (user_dir / "extra-openai-models.yaml").write_text(
        MODELS.replace("MODEL", server.model).replace("BASE", server.base_url))
    (user_dir / "keys.json").write_text(json.dumps({"local": server.api_key}))
    env = sandbox_env(tmp_path / "home", proxy, LLM_USER_PATH=str(user_dir))
    with server.watch() as seen:
        run = run_client([LLM, "-m", "local", "-s", "You are terse.", "--no-log", "Say hello."], env=env, cwd=tmp_path)
    evidence = seen[0]
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    assert run.returncode == 0, run.tail()
    assert "Hello from the scripted agent model." in run.stdout
    assert "You are terse." in evidence.conversations[0]["context"]  # the system prompt reached the model
    row["refused_egress"] = check_offline(run, proxy)
    row.update(text=True, tools=False)
