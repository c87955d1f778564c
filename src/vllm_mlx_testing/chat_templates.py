"""Jinja chat templates of the tiny test models' families.

* ``QWEN3_CHAT_TEMPLATE`` (ChatML as used by Qwen3) is the demo model's
  template: ``vllm_mlx.models.demo.chat_template``.
* ``LLAMA3_CHAT_TEMPLATE``: Llama 3.1 -- ``<|start_header_id|>role
  <|end_header_id|>\\n\\n...<|eot_id|>`` turns, tools as JSON in the first user
  message (or the system message with ``tools_in_user_message=false``),
  assistant tool calls as ``{"name", "parameters"}`` JSON and tool results in
  the ``ipython`` role.  Written for this project, following the public
  prompt format.

``content`` may be a string, ``None`` or a list of ``{"type": "text",
"text": ...}`` parts (other part types are ignored).
"""

from __future__ import annotations

from vllm_mlx.models.demo.chat_template import QWEN3_CHAT_TEMPLATE, TEXT_OF_MACRO

__all__ = ["CHAT_TEMPLATES", "LLAMA3_CHAT_TEMPLATE", "QWEN3_CHAT_TEMPLATE", "TEXT_OF_MACRO", "chat_template_for"]

LLAMA3_CHAT_TEMPLATE = TEXT_OF_MACRO + """\
{{- bos_token }}
{%- set ns = namespace(system='', tools_in_user=true, tools_pending=false, start=0) %}
{%- if tools_in_user_message is defined %}{%- set ns.tools_in_user = tools_in_user_message %}{%- endif %}
{%- if messages and messages[0].role == 'system' %}
{%- set ns.system = text_of(messages[0].content) | trim %}
{%- set ns.start = 1 %}
{%- endif %}
{%- set tool_intro = 'You have access to the functions below. To call one, reply with only a JSON object of the form {"name": function name, "parameters": object mapping argument names to values}. Do not use variables.\\n\\n' %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{%- if tools %}{{- 'Environment: ipython\\n' }}{%- endif %}
{{- 'Cutting Knowledge Date: December 2023\\n' }}
{{- 'Today Date: ' + (date_string if date_string is defined else '26 Jul 2024') + '\\n\\n' }}
{%- if tools and not ns.tools_in_user %}
{{- tool_intro }}
{%- for tool in tools %}{{- (tool | tojson(indent=4)) + '\\n\\n' }}{%- endfor %}
{%- elif tools %}
{%- set ns.tools_pending = true %}
{%- endif %}
{{- ns.system + '<|eot_id|>' }}
{%- for m in messages[ns.start:] %}
{%- set content = text_of(m.content) | trim %}
{%- if m.role == 'user' and ns.tools_pending %}
{%- set ns.tools_pending = false %}
{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' + tool_intro }}
{%- for tool in tools %}{{- (tool | tojson(indent=4)) + '\\n\\n' }}{%- endfor %}
{{- content + '<|eot_id|>' }}
{%- elif m.role == 'assistant' and m.tool_calls %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- for tc in m.tool_calls %}
{%- set tool_call = tc.function if tc.function else tc %}
{%- set args = tool_call.arguments if tool_call.arguments is string else (tool_call.arguments or {}) | tojson %}
{%- if not loop.first %}{{- '\\n' }}{%- endif %}
{{- '{"name": ' + (tool_call.name | tojson) + ', "parameters": ' + args + '}' }}
{%- endfor %}
{{- '<|eot_id|>' }}
{%- elif m.role == 'tool' or m.role == 'ipython' %}
{%- set raw = m.content %}
{%- if raw is mapping %}{%- set content = raw | tojson %}{%- endif %}
{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + content + '<|eot_id|>' }}
{%- else %}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + content + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CHAT_TEMPLATES = {"qwen3": QWEN3_CHAT_TEMPLATE, "llama": LLAMA3_CHAT_TEMPLATE}


def chat_template_for(family: str) -> str:
    """The Jinja chat template of ``family`` (``"qwen3"`` or ``"llama"``)."""
    try:
        return CHAT_TEMPLATES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}") from None
