"""`vllm-mlx serve --request-log FILE`: one JSON line per request, with a body summary and no prompt text."""

from __future__ import annotations

import json

import httpx
import openai

from vllm_mlx.api.request_log import summarize_body


def test_summary_of_each_request_shape():
    chat = summarize_body({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                           "messages": [{"role": "system", "content": "secret"},
                                        {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
                           "tools": [{"type": "function", "function": {"name": "Bash"}}]})
    assert chat == {"model": "m", "stream": True, "roles": ["system", "user"], "system": True, "tools": ["Bash"],
                    "images": 1, "stream_options": {"include_usage": True}}
    messages = summarize_body({"system": [{"type": "text", "text": "x"}], "messages": [{"role": "user"}],
                               "tools": [{"name": "Read", "input_schema": {}}], "max_tokens": 9})
    assert messages["system"] and messages["tools"] == ["Read"] and messages["max_tokens"] == 9
    responses = summarize_body({"instructions": "x", "input": [{"type": "function_call_output"}],
                                "tools": [{"type": "web_search"}]})
    assert responses["roles"] == ["function_call_output"] and responses["tools"] == ["web_search"]
    assert summarize_body([1, 2]) == {}


def test_every_request_is_logged_without_its_text(start_server, scripted_qwen3, tmp_path):
    log = tmp_path / "requests.jsonl"
    server = start_server(scripted_qwen3, "--trust-remote-code", "--served-model-name", "scripted",
                          "--api-key", "log-key", "--request-log", log)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="log-key", max_retries=0)
    stream = client.chat.completions.create(model="scripted", stream=True, messages=[
        {"role": "system", "content": "TOP SECRET PROMPT"}, {"role": "user", "content": "hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    refused = httpx.post(f"{server.base_url}/v1/messages", headers={"x-api-key": "wrong"},
                         json={"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert refused.status_code == 401
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    chat = next(r for r in lines if r["path"] == "/v1/chat/completions")
    assert chat["status"] == 200 and chat["auth"] == "bearer" and chat["method"] == "POST"
    assert chat["body"]["stream"] is True and chat["body"]["roles"] == ["system", "user"] and chat["body"]["system"]
    assert chat["user_agent"].startswith("OpenAI/Python")
    denied = next(r for r in lines if r["path"] == "/v1/messages")
    assert denied["status"] == 401 and denied["auth"] == "x-api-key"
    assert "TOP SECRET" not in log.read_text() and "log-key" not in log.read_text()
