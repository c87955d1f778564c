"""Images inside tool results on a vision model: shown to the model (Claude Code's Read tool on a PNG,
a chat ``tool`` message with an image part), through the official SDKs. A scripted Qwen2-VL model
(real vision tower) answers one way when the image reached its prompt and another when it did not.
"""

from __future__ import annotations

import base64

import anthropic
import openai
import pytest

from vllm_mlx_testing.vision_models import build_scripted_vision_model, data_url, random_image

SAW = "I see the picture from the tool."
RULES = [{"if_contains": "<|vision_start|>", "reply": SAW}]
READ = {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    path = build_scripted_vision_model(models_dir / "agent-vision", RULES, "No picture.")
    return start_server(path, "--trust-remote-code", "--served-model-name", "m")


def _read_turns(result_content) -> list[dict]:
    return [{"role": "user", "content": "Read /tmp/pic.png"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                               "input": {"file_path": "/tmp/pic.png"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result_content}]}]


def test_tool_result_images_reach_a_vision_model(server):
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(random_image(3)).decode()}}
    turns = _read_turns([image])
    with client.messages.stream(model="m", max_tokens=30, tools=[READ], messages=turns) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == SAW
    counted = client.messages.count_tokens(model="m", tools=[READ], messages=turns).input_tokens
    assert counted == final.usage.input_tokens + final.usage.cache_read_input_tokens
    without = client.messages.create(model="m", max_tokens=30, tools=[READ],
                                     messages=_read_turns([{"type": "text", "text": "binary file"}]))
    assert without.content[0].text == "No picture." and counted > without.usage.input_tokens + 8
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)
    chat = oai.chat.completions.create(model="m", messages=[
        {"role": "user", "content": "Take a screenshot"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "screenshot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [
            {"type": "text", "text": "Here it is:"},
            {"type": "image_url", "image_url": {"url": data_url(random_image(4))}}]}])
    assert chat.choices[0].message.content == SAW
