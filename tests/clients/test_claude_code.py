"""Claude Code (`claude -p`) over the Anthropic Messages API: a real Bash tool call whose output
comes back in the next request.  Profile: `vllm-mlx serve MODEL --client claude-code`."""

from __future__ import annotations

import json

import pytest

from .client_support import (PROMPT, check_agent_round_trip, check_offline, client_version, find_client, run_client,
                             sandbox_env)

CLAUDE = find_client("claude")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (scripts/install-clients.sh)")]


def test_claude_code_bash_tool_round_trip(agent_server, proxy, record, tmp_path):
    server = agent_server("qwen3")
    row = record(client="Claude Code", variant="", version=client_version(CLAUDE), family=server.parser)
    work = tmp_path / "work"
    work.mkdir()
    env = sandbox_env(tmp_path / "home", proxy, ANTHROPIC_BASE_URL=server.base_url, ANTHROPIC_API_KEY=server.api_key,
                      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1")
    with server.watch() as seen:
        run = run_client([CLAUDE, "-p", PROMPT, "--output-format", "stream-json", "--verbose",
                          "--model", server.model, "--allowedTools", "Bash"], env=env, cwd=work)
    evidence = seen[0]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e.get("type") == "result"]
    final = results[-1]["result"] if results else ""
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    check_agent_round_trip(run, evidence, proxy, final)
    tool_uses = [b for e in events if e.get("type") == "assistant" for b in e["message"]["content"]
                 if b.get("type") == "tool_use"]
    assert tool_uses[0]["name"] == "Bash" and "MARKER_$((6*7))" in tool_uses[0]["input"]["command"]
    assert not results[-1]["is_error"]
    assert evidence.protocols() == ["/v1/messages"] and evidence.facts()["streaming"]
    row.update(text=True, tools=True)


def _claude(server, tmp_path, prompt: str, proxy, *tools: str):
    """One `claude -p` session in ``tmp_path``/work against ``server``; (the run, its stream-json events)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = sandbox_env(tmp_path / "home", proxy, ANTHROPIC_BASE_URL=server.base_url,
                      ANTHROPIC_API_KEY=server.api_key, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                      DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1")
    run = run_client([CLAUDE, "-p", prompt, "--output-format", "stream-json", "--verbose", "--model", server.model,
                      "--allowedTools", ",".join(tools or ("Bash",))], env=env, cwd=work)
    return run, [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_claude_code_second_session_reuses_the_first_sessions_cache(agent_server, proxy, record, tmp_path):
    """Each session's first system block is a billing header that changes (cc_version=2.1.197.0df, .2b7,
    ...); the server drops it, so a new session's ~35k-token system prompt comes from the prefix cache."""
    server = agent_server("qwen3")
    row = record(client="Claude Code", variant="second session: prefix cache", version=client_version(CLAUDE),
                 family=server.parser)
    with server.watch() as seen:
        first, _ = _claude(server, tmp_path, PROMPT, proxy)  # the same project folder, a new session
        # another first message: another header (its cc_version suffix is derived from the message)
        second, events = _claude(server, tmp_path, "Run the marker command again and report it.", proxy)
    assert first.returncode == 0 and second.returncode == 0, second.tail()
    usage = next(e["message"]["usage"] for e in events if e.get("type") == "assistant")  # the first request's
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    row.update(client_seconds=round(first.seconds + second.seconds, 1), **seen[0].facts(), text=True, tools=True,
               checked=f"2nd session's first turn: {usage['cache_read_input_tokens']} of {prompt} prompt tokens "
                       f"read from the cache")
    assert prompt > 10000 and usage["cache_read_input_tokens"] > 0.9 * prompt, usage
    check_offline(second, proxy)


def test_claude_code_reads_a_png_through_its_read_tool_on_a_vision_model(start_server, models_dir, proxy, record,
                                                                         tmp_path):
    """The Read tool returns the PNG as an image block inside its tool_result; on a vision model the
    image reaches the model (a scripted Qwen2-VL with a real vision tower), which answers about it."""
    from PIL import Image

    from vllm_mlx_testing.vision_models import build_scripted_vision_model

    picture = tmp_path / "work" / "pic.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (220, 20, 20)).save(picture)
    call = json.dumps({"name": "Read", "arguments": {"file_path": str(picture)}})
    rules = [{"if_contains": "<|vision_start|>", "reply": "The picture is a red square."},
             {"if_contains": "<tool_response>", "reply": "No image came back."},
             {"if_contains": "Describe pic.png", "reply": f"<tool_call>\n{call}\n</tool_call>"}]
    path = build_scripted_vision_model(models_dir / "claude-vision", rules, "Hello from the vision model.")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 262144}))
    log = tmp_path / "requests.jsonl"
    vision = start_server(path, "--trust-remote-code", "--served-model-name", "vision", "--api-key", "k",
                          "--request-log", log)
    vision.api_key, vision.model = "k", "vision"
    row = record(client="Claude Code", variant="Read tool on a PNG, vision model", version=client_version(CLAUDE),
                 family="hermes")
    run, events = _claude(vision, tmp_path, "Describe pic.png in this folder.", proxy, "Read")
    results = [e for e in events if e.get("type") == "result"]
    reads = [b for e in events if e.get("type") == "assistant" for b in e["message"]["content"]
             if b.get("type") == "tool_use"]
    bodies = [json.loads(line).get("body") or {} for line in log.read_text().splitlines()]
    row.update(client_seconds=round(run.seconds, 1), protocol="/v1/messages", streaming=True, system_prompt=True,
               auth=["x-api-key"], text=True, tools=True, tools_offered=24,
               images=sum(b.get("images", 0) for b in bodies if isinstance(b, dict)),
               checked="Read returned the PNG as an image block; the model saw it and answered")
    assert run.returncode == 0, run.tail()
    assert reads and reads[0]["name"] == "Read", run.tail()
    assert results and results[-1]["result"] == "The picture is a red square.", run.tail()
    assert row["images"] >= 1
    check_offline(run, proxy)


COMPACT_CONTEXT = 60000  # Claude Code's first request is ~35k tokens; each round below adds ~5.5k


def test_claude_code_compacts_after_a_context_overflow(start_server, models_dir, proxy, record, tmp_path):
    """Rounds of Bash output grow the conversation until a request no longer fits: the server answers
    ``prompt is too long: N tokens > M maximum`` (Anthropic's wording), Claude Code compacts the
    conversation (a summary request) and goes on from the summary."""
    from vllm_mlx_testing import build_scripted_model

    def bash(command: str) -> str:
        return "<tool_call>\n" + json.dumps({"name": "Bash", "arguments": {"command": command}}) + "\n</tool_call>"

    rounds = 8
    rules = [{"if_contains": "continued from a previous conversation", "reply": "After compacting: all is well."},
             {"if_contains": "detailed summary of the conversation", "reply": "<summary>Ran seq rounds.</summary>"}]
    rules += [{"if_contains": f"ROUND_{k}_DONE", "reply": bash(f"seq 1 1500; echo ROUND_{k + 1}_DONE")
               if k < rounds else "No overflow happened."} for k in range(rounds, 0, -1)]
    rules += [{"if_contains": "Run the rounds", "reply": bash("seq 1 1500; echo ROUND_1_DONE")}]
    path = build_scripted_model(models_dir / "claude-compact", rules, "Hello.", "qwen3", max_position_embeddings=262144)
    log = tmp_path / "requests.jsonl"
    server = start_server(path, "--trust-remote-code", "--served-model-name", "scripted", "--api-key", "k",
                          "--request-log", log, "--max-model-len", COMPACT_CONTEXT)
    server.api_key, server.model = "k", "scripted"
    row = record(client="Claude Code", variant="compacts after a context overflow", version=client_version(CLAUDE),
                 family="hermes")
    run, events = _claude(server, tmp_path, "Run the rounds, please.", proxy)
    statuses = [json.loads(line)["status"] for line in log.read_text().splitlines()
                if "/v1/messages" in json.loads(line)["path"]]
    boundary = [e for e in events if e.get("subtype") == "compact_boundary"]
    results = [e for e in events if e.get("type") == "result"]
    row.update(client_seconds=round(run.seconds, 1), protocol="/v1/messages", streaming=True, system_prompt=True,
               auth=["x-api-key"], text=True, tools=True, tools_offered=24,
               checked=f"400 'prompt is too long' after {statuses.index(400) if 400 in statuses else '?'} requests; "
                       f"compacted ({boundary[0]['compact_metadata']['pre_tokens'] if boundary else '?'} -> "
                       f"{boundary[0]['compact_metadata']['post_tokens'] if boundary else '?'} tokens), went on")
    assert run.returncode == 0, run.tail()
    assert 400 in statuses, f"no request overflowed ({statuses})"
    assert boundary and boundary[0]["compact_metadata"]["trigger"] == "auto", run.tail()
    assert results and results[-1]["result"] == "After compacting: all is well." and not results[-1]["is_error"]
    check_offline(run, proxy)
