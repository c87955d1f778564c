"""Claude Code's request shapes through the official `anthropic` SDK: the billing header does not
break prefix-cache reuse across sessions, images inside tool_result blocks, count_tokens agreeing
with messages on every shape Claude Code sends.
"""

from __future__ import annotations

import base64
import io
import json

import anthropic
import openai
import pytest

TEXT_MODEL_NOTE = "[image omitted: this model does not accept images]"
RULES = [
    {"if_contains": TEXT_MODEL_NOTE, "reply": "I cannot see that image."},
    {"if_contains": "file contents: 42", "reply": "The file says 42."},
]
# ~2k tokens of system prompt: what a second session should find in the prefix cache
SYSTEM = "You are an agent that edits code carefully. " * 200
BASH = {"name": "Bash", "description": "Run a shell command", "input_schema": {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": False,
    "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}}, "required": ["command"]},
    "cache_control": {"type": "ephemeral"}}
READ = {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                                         "required": ["file_path"]}}


def billing(session: str) -> dict:
    return {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.197.{session}; "
                                    f"cc_entrypoint=sdk-cli; cch={session};"}


def png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    from vllm_mlx_testing import build_scripted_model

    path = build_scripted_model(models_dir / "agent-anthropic", RULES, "Hello.", "qwen3", max_position_embeddings=8192)
    return start_server(path, "--trust-remote-code", "--served-model-name", "m")


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)


# -- 1. the billing header and the prefix cache ------------------------------------------------------


def test_a_new_session_reuses_the_previous_sessions_system_prompt(client):
    def first_turn(session: str):
        system = [billing(session), {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
        with client.messages.stream(model="m", max_tokens=20, system=system, tools=[BASH],
                                    messages=[{"role": "user", "content": f"session {session}: hello"}]) as s:
            return s.get_final_message().usage

    first_turn("aaaa")
    second = first_turn("bbbb")
    total = second.input_tokens + second.cache_read_input_tokens
    assert second.cache_read_input_tokens > 0.9 * total, second  # all but the new user turn came from the cache
    # the header never reaches the model: the same count with or without it
    plain = client.messages.count_tokens(model="m", system=SYSTEM, messages=[{"role": "user", "content": "x"}])
    with_header = client.messages.count_tokens(model="m", system=[billing("cccc"), {"type": "text", "text": SYSTEM}],
                                               messages=[{"role": "user", "content": "x"}])
    assert plain.input_tokens == with_header.input_tokens


# -- 3. images inside tool results on a text model ------------------------------------------------------


def _tool_turns(content) -> list[dict]:
    return [{"role": "user", "content": "Read the picture"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                               "input": {"file_path": "/tmp/pic.png"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": content}]}]


def test_images_in_tool_results_become_a_note_on_a_text_model(client, server):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png()}}
    msg = client.messages.create(model="m", max_tokens=30, tools=[READ],
                                 messages=_tool_turns([image, {"type": "text", "text": "(8x8 PNG)"}]))
    assert msg.content[0].text == "I cannot see that image."
    # chat: a tool message with an image part; Responses: a function_call_output with an input_image
    url = f"data:image/png;base64,{png()}"
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)
    chat = oai.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "Read the picture"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "Read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert chat.choices[0].message.content == "I cannot see that image."
    resp = oai.responses.create(model="m", input=[
        {"role": "user", "content": "Read the picture"},
        {"type": "function_call", "call_id": "c1", "name": "Read", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_image", "image_url": url}]}])
    assert resp.output_text == "I cannot see that image."
    # a user image on a text model is still refused, as before
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": [image]}])


# -- 4. count_tokens agrees with messages on every shape Claude Code sends ------------------------------------

CLAUDE_CODE_SHAPES = {
    "plain": dict(messages=[{"role": "user", "content": "hello"}]),
    "system blocks + billing header + cache_control": dict(
        system=[billing("dddd"), {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]),
    "role system inside messages": dict(messages=[{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "hello"}]),
    "tools (JSON Schema 2020-12), tools: []": dict(tools=[BASH, READ], messages=[{"role": "user", "content": "hi"}]),
    "empty tools": dict(tools=[], messages=[{"role": "user", "content": "hi"}]),
    "thinking adaptive + output_config + context_management + metadata": dict(
        thinking={"type": "adaptive"}, messages=[{"role": "user", "content": "hi"}],
        extra_body={"output_config": {"effort": "high"}, "context_management": {"edits": []},
                    "metadata": {"user_id": "user_abc_account_def_session_ghi"}}),
    "tool_use / tool_result with thinking history": dict(tools=[BASH], messages=[
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should run ls.", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {"command": "ls"},
             "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "file contents: 42",
                                      "cache_control": {"type": "ephemeral"}}]}]),
    "tool_result with an image (text model: a note)": dict(tools=[READ], messages=_tool_turns([
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png()}}])),
    "tool_result is_error": dict(tools=[BASH], messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "not found"}]},
                                     {"type": "text", "text": "try again"}]}]),
}


@pytest.mark.parametrize("shape", sorted(CLAUDE_CODE_SHAPES))
def test_count_tokens_agrees_with_messages(client, shape):
    kwargs = CLAUDE_CODE_SHAPES[shape]
    counted = client.beta.messages.count_tokens(model="m", **kwargs).input_tokens
    with client.beta.messages.stream(model="m", max_tokens=16, **kwargs) as stream:  # Claude Code streams
        usage = stream.get_final_message().usage
    assert counted == usage.input_tokens + usage.cache_read_input_tokens, json.dumps(usage.model_dump())
