"""Parser registry and automatic detection from chat templates and vocabularies.

The template snippets below are short, hand-written stand-ins that contain the distinctive
markup of each family's public chat template.
"""

from __future__ import annotations

import pytest

from vllm_mlx.parsers import (
    REASONING_PARSERS,
    TOOL_PARSERS,
    OutputPipeline,
    ReasoningParser,
    ToolParser,
    aggregate,
    detect_reasoning_parser,
    detect_tool_parser,
    get_reasoning_parser,
    get_tool_parser,
    prompt_opens_reasoning,
)

QWEN3 = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{{ tool | tojson }}</tools>\n"
    'For each function call, return a json object within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": '
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>{%- endif %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}{%- endif %}"
)
QWEN25 = (
    "<|im_start|>system\n# Tools\n<tools>{{ tool | tojson }}</tools>\n"
    "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>"
)
QWEN3_CODER = (
    "<tools>{% for tool in tools %}<function>\n<name>{{ tool.name }}</name>{% endfor %}</tools>\n"
    "If you choose to call a function ONLY reply in the following format:\n"
    "<tool_call>\n<function=example_function_name>\n"
    "<parameter=example_parameter_1>\nvalue_1\n</parameter>\n</function>\n</tool_call>"
)
GLM45 = (
    "[gMASK]<sop><|system|>\n# Tools\n<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n"
    "<arg_value>{arg-value-1}</arg_value>\n</tool_call><|assistant|>\n"
    "{% if not enable_thinking %}<think></think>{% endif %}"
)
KIMI = (
    "{%- for tool_call in message.tool_calls -%}<|tool_calls_section_begin|><|tool_call_begin|>{{ tool_call.id }}"
    "<|tool_call_argument_begin|>{{ tool_call.function.arguments }}<|tool_call_end|>"
    "<|tool_calls_section_end|>{%- endfor -%}"
    "<|im_assistant|>assistant<|im_middle|>"
)
DEEPSEEK_V3 = (
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
    "'<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}"
)
DEEPSEEK_R1 = DEEPSEEK_V3 + "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
DEEPSEEK_V31 = (
    "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['function']['name'] + '<｜tool▁sep｜>' + "
    "tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}{{'<｜Assistant｜></think>'}}"
)
MISTRAL_SMALL_32 = (
    "{{- '[AVAILABLE_TOOLS]' + tools|tojson + '[/AVAILABLE_TOOLS]' }}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{{- '[TOOL_CALLS]' + tool_call.function.name + '[CALL_ID]' + tool_call.id + '[ARGS]' + arguments|tojson }}"
)
MAGISTRAL = MISTRAL_SMALL_32 + "{{- '[THINK]' + thinking + '[/THINK]' }}"
LLAMA31 = (
    "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n{%- if tools is not none %}"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "{%- endif %}{{- '<|python_tag|>' + tool_call.name + '.call(' }}<|eot_id|>"
)
LLAMA32_PYTHONIC = (
    "<|start_header_id|>system<|end_header_id|>\n\nYou MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]<|eot_id|>"
)
LLAMA4_PYTHONIC = (
    "<|header_start|>system<|header_end|>\n\nreturn the call in the format [func_name1(params_name1=params_value1), "
    "func_name2(params)]<|eot|>{{- '<|python_start|>' }}"
)
LLAMA4_JSON = (
    "<|header_start|>system<|header_end|>\n\n"
    "{%- if tools is not none %}Given the following functions{% endif %}<|eot|>"
)
GRANITE_33 = (
    "<|start_of_role|>available_tools<|end_of_role|>{{ tools | tojson }}<|end_of_text|>"
    "{%- if message.tool_calls %}<|tool_call|>{{ message.tool_calls | tojson }}{%- endif %}"
)
NEMOTRON_NANO = "<SPECIAL_10>System\n<AVAILABLE_TOOLS>[...]</AVAILABLE_TOOLS><TOOLCALL>[...]</TOOLCALL><think>\n"
LFM2 = (
    "<|im_start|>system\nList of tools: <|tool_list_start|>[...]<|tool_list_end|>"
    "<|tool_call_start|>[...]<|tool_call_end|>"
)
FUNCTIONARY_V32 = (
    "Respond in this format:\n>>>${recipient}\n${content}\n{{ '>>>all\\n' + message['content'] }}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n>>>' }}{% endif %}"
)
FUNCTIONARY_V31 = (
    "<|start_header_id|>system<|end_header_id|>\n\nUse the following format to call a function:\n"
    '<function=example_function_name>{"example_name": "example_value"}</function><|eot_id|>'
)
XLAM = (
    "You are a helpful assistant. You are developed by Salesforce xLAM team. When using tools, make calls in a "
    'single JSON array: [{"name": "tool_call_name", "arguments": {"arg1": "value1"}}]<|eot_id|>'
)
GPT_OSS = (
    "<|start|>system<|message|>Reasoning: medium\n# Valid channels: analysis, commentary, final.<|end|>"
    "{{- '<|start|>assistant to=' + 'functions.' + tool_call.name + '<|channel|>commentary json<|message|>' }}"
)
PLAIN_CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.mark.parametrize(
    "template, tool_parser, reasoning_parser",
    [
        (QWEN3, "hermes", "qwen3"),
        (QWEN25, "hermes", None),
        (QWEN3_CODER, "qwen3_coder", None),
        (GLM45, "glm45", "qwen3"),
        (KIMI, "kimi_k2", None),
        (DEEPSEEK_V3, "deepseek_v3", None),
        (DEEPSEEK_R1, "deepseek_v3", "deepseek_r1"),
        (DEEPSEEK_V31, "deepseek_v31", "deepseek_r1"),
        (MISTRAL_SMALL_32, "mistral", None),
        (MAGISTRAL, "mistral", "mistral"),
        (LLAMA31, "llama3_json", None),
        (LLAMA32_PYTHONIC, "pythonic", None),
        (LLAMA4_PYTHONIC, "llama4_pythonic", None),
        (LLAMA4_JSON, "llama4_json", None),
        (GRANITE_33, "granite", None),
        (NEMOTRON_NANO, "nemotron_json", "qwen3"),
        (LFM2, "lfm2", None),
        (FUNCTIONARY_V32, "functionary_v3", None),
        (FUNCTIONARY_V31, "functionary_v3", None),
        (XLAM, "xlam", None),
        (GPT_OSS, "openai", "openai_gptoss"),
        (PLAIN_CHATML, None, None),
        ("", None, None),
    ],
)
def test_detect_from_template(template, tool_parser, reasoning_parser):
    assert detect_tool_parser(template) == tool_parser
    assert detect_reasoning_parser(template) == reasoning_parser


@pytest.mark.parametrize(
    "token, tool_parser",
    [
        ("<|channel|>", "openai"),
        ("<tool_call>", "hermes"),
        ("[TOOL_CALLS]", "mistral"),
        ("<|python_tag|>", "llama3_json"),
        ("<|tool_call_start|>", "lfm2"),
        ("<｜tool▁calls▁begin｜>", "deepseek_v3"),
    ],
)
def test_detect_tool_parser_falls_back_to_vocabulary(token, tool_parser):
    assert detect_tool_parser(PLAIN_CHATML, {"<|im_start|>", token}) == tool_parser


def test_detect_reasoning_parser_from_vocabulary():
    assert detect_reasoning_parser(PLAIN_CHATML, {"<think>", "</think>"}) == "qwen3"
    assert detect_reasoning_parser(None, {"<|im_start|>"}) is None


def test_prompt_opens_reasoning():
    assert prompt_opens_reasoning("qwen3", "<|im_start|>assistant\n<think>\n")
    assert prompt_opens_reasoning("deepseek_r1", "<｜User｜>hi<｜Assistant｜><think>\n")
    assert not prompt_opens_reasoning("qwen3", "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_reasoning("qwen3", "<|im_start|>assistant\n")
    assert prompt_opens_reasoning("mistral", "[INST]hi[/INST][THINK]")
    assert not prompt_opens_reasoning("openai_gptoss", "<|start|>assistant")
    assert not prompt_opens_reasoning(None, "<think>")


def test_get_parser_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="hermes"):
        get_tool_parser("nope")
    with pytest.raises(ValueError, match="qwen3"):
        get_reasoning_parser("nope")


def test_registries_are_read_only():
    with pytest.raises(TypeError):
        TOOL_PARSERS["x"] = ToolParser  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(TOOL_PARSERS))
def test_every_tool_parser_passes_plain_text_through(name):
    parser = get_tool_parser(name)(None)
    assert isinstance(parser, ToolParser)
    result = aggregate(OutputPipeline(None, parser).run("Plain answer, nothing to call."))
    assert (result.content, result.tool_calls) == ("Plain answer, nothing to call.", [])


@pytest.mark.parametrize("name", sorted(REASONING_PARSERS))
def test_every_reasoning_parser_passes_plain_text_through(name):
    parser = get_reasoning_parser(name)()
    assert isinstance(parser, ReasoningParser)
    result = aggregate(OutputPipeline(parser, None).run("Plain answer."))
    assert (result.reasoning, result.content) == ("", "Plain answer.")
