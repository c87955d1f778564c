"""Tool-reliability probe: 3 tools x 3 scenarios, per output family, through the real server.

Scenarios: (1) a non-streaming request yields exactly the expected call; (2) the same request
streamed through the SDK's stream helper yields the same call; (3) with the tool's result in the
conversation the answer is text quoting it, with no call. The models are scripted (they emit each
family's markup), so the probe measures the server's side of tool calling — template rendering,
detokenizing, parsing, streaming, history — not a model's judgement.
"""

from __future__ import annotations

import json

import openai
import pytest

PROBE_TOOLS = {
    "get_weather": ({"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, {"city": "Zürich", "unit": "C"}),
    "search_docs": ({"query": {"type": "string"}, "limit": {"type": "integer"}}, {"query": "KV cache", "limit": 3}),
    "create_event": ({"title": {"type": "string"},
                      "attendees": {"type": "array", "items": {"type": "string"}}},
                     {"title": "Réunion 東京", "attendees": ["ana", "bo"]}),
}
TOOLS = [{"type": "function", "function": {"name": name, "description": f"probe tool {name}",
                                           "parameters": {"type": "object", "properties": props,
                                                          "required": list(props)}}}
         for name, (props, _) in PROBE_TOOLS.items()]


def _markup(family: str, name: str, args: dict) -> str:
    body = json.dumps(args, ensure_ascii=False)
    return {
        "hermes": f'<tool_call>\n{{"name": "{name}", "arguments": {body}}}\n</tool_call>',
        "llama3_json": f'{{"name": "{name}", "parameters": {body}}}',
        "mistral": f'[TOOL_CALLS][{{"name": "{name}", "arguments": {body}}}]',
        "harmony": f"<|channel|>analysis<|message|>Use {name}.<|end|><|start|>assistant<|channel|>commentary "
                   f"to=functions.{name} <|constrain|>json<|message|>{body}<|call|>",
    }[family]


FAMILIES = {"hermes": ("qwen3", []), "llama3_json": ("llama", []),
            "mistral": ("qwen3", ["--tool-call-parser", "mistral"]),
            "harmony": ("qwen3", ["--tool-call-parser", "openai", "--reasoning-parser", "openai_gptoss"])}


@pytest.fixture(scope="module", params=list(FAMILIES))
def probe_server(request, start_server, models_dir):
    from vllm_mlx_testing import build_scripted_model

    family = request.param
    model_family, flags = FAMILIES[family]
    rules = []
    for name, (_, args) in PROBE_TOOLS.items():
        rules.append({"if_contains": f"result-of-{name}", "reply": f"Done: result-of-{name} received."})
    for name, (_, args) in PROBE_TOOLS.items():
        rules.append({"if_contains": f"please {name}", "reply": _markup(family, name, args)})
    path = build_scripted_model(models_dir / f"probe-{family}", rules, "No call.", model_family)
    return family, start_server(path, "--trust-remote-code", *flags)


def run_probe(server) -> dict[tuple[str, int], bool]:
    c = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    results = {}
    for name, (_, args) in PROBE_TOOLS.items():
        messages = [{"role": "user", "content": f"please {name} now"}]
        resp = c.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        calls = resp.choices[0].message.tool_calls or []
        results[(name, 1)] = (resp.choices[0].finish_reason == "tool_calls" and len(calls) == 1
                              and calls[0].function.name == name and json.loads(calls[0].function.arguments) == args
                              and not resp.choices[0].message.content)
        with c.chat.completions.stream(model="m", messages=messages, tools=TOOLS) as stream:
            final = stream.get_final_completion()
        scalls = final.choices[0].message.tool_calls or []
        results[(name, 2)] = (len(scalls) == 1 and scalls[0].function.name == name
                              and json.loads(scalls[0].function.arguments) == args)
        if calls:
            messages += [{"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
                         {"role": "tool", "tool_call_id": calls[0].id, "content": f"result-of-{name}"}]
        answer = c.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        results[(name, 3)] = (answer.choices[0].message.content == f"Done: result-of-{name} received."
                              and not answer.choices[0].message.tool_calls)
    return results


def test_probe_is_nine_of_nine(probe_server):
    family, server = probe_server
    results = run_probe(server)
    failed = [key for key, ok in results.items() if not ok]
    assert len(results) == 9 and not failed, f"{family}: {9 - len(failed)}/9, failed {failed}"
