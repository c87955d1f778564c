"""Responses features Codex and opencode use, through the official `openai` SDK: custom tools with a
Lark grammar (Codex's apply_patch) enforced while the model writes the call, reasoning summaries,
and stored responses read back and deleted.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import httpx
import openai
import pytest

# Codex's apply_patch tool, as Codex CLI sends it
APPLY_PATCH_GRAMMAR = (
    'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?\n\n'
    'hunk: add_hunk | delete_hunk | update_hunk\nadd_hunk: "*** Add File: " filename LF add_line+\n'
    'delete_hunk: "*** Delete File: " filename LF\n'
    'update_hunk: "*** Update File: " filename LF change_move? change?\n\nfilename: /(.+)/\n'
    'add_line: "+" /(.*)/ LF -> line\n\nchange_move: "*** Move to: " filename LF\n'
    'change: (change_context | change_line)+ eof_line?\nchange_context: ("@@" | "@@ " /(.+)/) LF\n'
    'change_line: ("+" | "-" | " ") /(.*)/ LF\neof_line: "*** End of File" LF\n\n%import common.LF\n')
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
               "format": {"type": "grammar", "syntax": "lark", "definition": APPLY_PATCH_GRAMMAR}}
EXEC = {"type": "function", "name": "exec_command", "parameters": {
    "type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}
PATCH = '*** Begin Patch\n*** Add File: hello.txt\n+Hello "world"\n*** End Patch\n'
CALL = ('<tool_call>\n{"name": "apply_patch", "arguments": {"input": ' + json.dumps(PATCH) + '}}\n</tool_call>')
NOTE = 'buy milk\nand "eggs"'
RULES = [
    {"if_contains": "Take a note", "reply": '<tool_call>\n{"name": "note", "arguments": {"input": '
                                           + json.dumps(NOTE) + '}}\n</tool_call>'},
    {"if_contains": "Done: wrote hello.txt", "reply": "The file is written."},
    {"if_contains": "Add a hello file", "reply": CALL},
    {"if_contains": "think", "reply": "<think>\nThe user wants a plan.\n</think>\n\nStep one: relax."},
]


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    from vllm_mlx_testing import build_scripted_model

    path = build_scripted_model(models_dir / "agent-responses", RULES, "No.", "qwen3")
    return start_server(path, "--trust-remote-code", "--served-model-name", "m")


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)


# -- 5. custom tools -------------------------------------------------------------------------------


def test_custom_tool_call_comes_back_as_custom_tool_call(client):
    resp = client.responses.create(model="m", input="Add a hello file", tools=[APPLY_PATCH, EXEC])
    [call] = resp.output
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.input == PATCH
    with client.responses.stream(model="m", input="Add a hello file", tools=[APPLY_PATCH, EXEC]) as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_response()
    assert "response.custom_tool_call_input.done" in kinds and final.output[0].input == PATCH
    # the call and its output in the history: the model sees the output and answers
    answer = client.responses.create(model="m", tools=[APPLY_PATCH, EXEC], input=[
        {"role": "user", "content": "Add a hello file"},
        {"type": "custom_tool_call", "call_id": call.call_id, "name": "apply_patch", "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done: wrote hello.txt"}])
    assert answer.output_text == "The file is written."
    # previous_response_id carries the custom call too
    follow = client.responses.create(model="m", previous_response_id=resp.id, tools=[APPLY_PATCH, EXEC], input=[
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done: wrote hello.txt"}])
    assert follow.output_text == "The file is written."


def test_the_grammar_is_enforced_while_the_model_writes_the_call(client):
    """The scripted model wants to say "No."; forced to call apply_patch, the grammar makes it open
    a patch (the fixed literals are the only tokens the grammar allows)."""
    resp = client.responses.create(model="m", input="Anything", tools=[APPLY_PATCH],
                                   tool_choice={"type": "custom", "name": "apply_patch"}, max_output_tokens=80)
    # cut off by max_output_tokens inside the call (the model never wanted to write one): returned as text
    text = resp.output[0].content[0].text
    assert text.startswith('<tool_call>\n{"name": "apply_patch", "arguments": {"input": "*** Begin Patch\\n***')


def test_the_grammar_rejects_what_it_does_not_describe():
    from vllm_mlx.engine.constraints import GrammarCompiler
    from vllm_mlx.serving.custom_tools import call_grammar, custom_function
    from vllm_mlx_testing.builders import model_family, write_tokenizer_files
    from transformers import AutoTokenizer

    folder = pathlib.Path(tempfile.mkdtemp())
    write_tokenizer_files(folder, model_family("qwen3"), 2048)
    tok = AutoTokenizer.from_pretrained(folder)
    compiler = GrammarCompiler(tok, 2048, [tok.convert_tokens_to_ids("<|im_end|>")])
    tools = [custom_function("apply_patch", None), {"type": "function", "function": EXEC}]
    spec = call_grammar(tools, {"apply_patch": APPLY_PATCH["format"]}, name=None, open_tag="<tool_call>",
                        close_tag="</tool_call>", arguments_key="arguments", several=True,
                        free_text=("<think>", "</think>"))

    def accepts(text: str) -> bool:
        matcher = compiler.matcher(spec)
        return all(matcher.consume_token(t) for t in tok.encode(text, add_special_tokens=False))

    assert accepts("Let me write it.\n" + CALL)
    assert accepts('<tool_call>\n{"name": "exec_command", "arguments": {"cmd":"ls"}}\n</tool_call>')
    bad = CALL.replace("*** Add File: ", "rm -rf ")
    assert not accepts(bad)
    assert not accepts('<tool_call>\n{"name": "exec_command", "arguments": {"command":"ls"}}\n</tool_call>')


def test_a_text_format_custom_tool_takes_any_text(client):
    note = {"type": "custom", "name": "note", "description": "Write a note.", "format": {"type": "text"}}
    resp = client.responses.create(model="m", input="Take a note", tools=[note])
    assert [(o.type, o.name, o.input) for o in resp.output] == [("custom_tool_call", "note", NOTE)]


def test_a_bad_custom_tool_grammar_is_a_400(client):
    broken = {**APPLY_PATCH, "format": {"type": "grammar", "syntax": "lark", "definition": "start: %json {}"}}
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", input="hi", tools=[broken])
    assert err.value.body["param"] == "tools[0].format"


# -- 6. reasoning summaries and stored responses -------------------------------------------------------


def test_reasoning_summary_parts_and_events(client):
    resp = client.responses.create(model="m", input="Please think", reasoning={"summary": "auto"})
    reasoning = resp.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary[0].text.strip() == "The user wants a plan."
    assert resp.reasoning.summary == "auto" and resp.output_text == "Step one: relax."
    with client.responses.stream(model="m", input="Please think", reasoning={"summary": "detailed"}) as stream:
        events = list(stream)
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    done = [e.text for e in events if e.type == "response.reasoning_summary_text.done"]
    assert deltas.strip() == "The user wants a plan." and done == [deltas]
    assert [e.type for e in events if e.type.startswith("response.reasoning_summary_part")] == [
        "response.reasoning_summary_part.added", "response.reasoning_summary_part.done"]
    plain = client.responses.create(model="m", input="Please think")  # no summary asked: reasoning_text
    assert plain.output[0].summary == [] and plain.output[0].content[0].text.strip() == "The user wants a plan."


def test_stored_responses_can_be_read_back_and_deleted(client, server):
    resp = client.responses.create(model="m", input="Hello")
    again = client.responses.retrieve(resp.id)
    assert again.model_dump() == resp.model_dump()
    client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    gone = httpx.delete(f"{server.base_url}/v1/responses/{resp.id}").json()
    assert gone["error"]["code"] == "response_not_found"
    unstored = client.responses.create(model="m", input="Hello", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


# -- 13. validation errors name input[...] paths -----------------------------------------------------------


def test_validation_errors_name_input_paths(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", input=[{"role": "user", "content": "hi"}, {"type": "function_call"}])
    assert err.value.body["param"] == "input[1]" and err.value.body["message"].startswith("input[1]:")
    with pytest.raises(openai.BadRequestError) as part:
        client.responses.create(model="m", input=[{"role": "assistant", "content": [
            {"type": "output_text", "text": "x"}, {"type": "input_image", "image_url": "data:,"}]}])
    assert part.value.body["param"] == "input[0].content"
    raw = httpx.post(f"{server.base_url}/v1/responses", json={"model": "m", "input": [{"role": "user"}, 7]}).json()
    assert raw["error"]["param"].startswith("input[") and raw["error"]["message"].startswith("input[")
