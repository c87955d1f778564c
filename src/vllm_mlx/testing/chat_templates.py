"""Jinja chat templates for the tiny test models.

Both templates are written for this project, following the public prompt
formats of the two families:

* ``QWEN3_CHAT_TEMPLATE``: ChatML as used by Qwen3 -- ``<|im_start|>role\\n
  ...<|im_end|>`` turns, tools listed as JSON inside ``<tools></tools>`` in the
  system turn, assistant tool calls as ``<tool_call>{"name", "arguments"}
  </tool_call>`` blocks, tool results as ``<tool_response>`` blocks inside a
  user turn, ``<think>`` reasoning dropped from history before the last user
  query, and ``enable_thinking=false`` closing an empty think block after the
  generation prompt.
* ``LLAMA3_CHAT_TEMPLATE``: Llama 3.1 -- ``<|start_header_id|>role
  <|end_header_id|>\\n\\n...<|eot_id|>`` turns, tools as JSON in the first user
  message (or the system message with ``tools_in_user_message=false``),
  assistant tool calls as ``{"name", "parameters"}`` JSON and tool results in
  the ``ipython`` role.

``content`` may be a string, ``None`` or a list of ``{"type": "text",
"text": ...}`` parts (other part types are ignored).
"""

from __future__ import annotations

# Shared macro: flatten a message ``content`` into text.
TEXT_OF_MACRO = """\
{%- macro text_of(content) -%}
{%- if content is none -%}
{%- elif content is string -%}{{- content -}}
{%- else -%}
{%- for part in content -%}
{%- if part is string -%}{{- part -}}
{%- elif part is mapping and part.get('type', 'text') == 'text' -%}{{- part.get('text') or '' -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
"""

QWEN3_CHAT_TEMPLATE = TEXT_OF_MACRO + """\
{%- set first_is_system = messages and messages[0].role == 'system' %}
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if first_is_system %}{{- text_of(messages[0].content) + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou can call one or more of the functions below to help with the user\\'s request.\\n\\n' }}
{{- 'The function signatures are listed inside <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nTo call a function, answer with a JSON object holding its name and arguments inside <tool_call></tool_call> XML tags:\\n' }}
{{- '<tool_call>\\n{"name": <function-name>, "arguments": <arguments-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif first_is_system %}
{{- '<|im_start|>system\\n' + text_of(messages[0].content) + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query=-1) %}
{%- for m in messages %}
{%- if m.role == 'user' %}{%- set ns.last_query = loop.index0 %}{%- endif %}
{%- endfor %}
{%- for m in messages %}
{%- set content = text_of(m.content) %}
{%- if m.role == 'system' and loop.first %}
{%- elif m.role == 'user' or m.role == 'system' %}
{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}
{%- elif m.role == 'assistant' %}
{%- set reasoning = m.reasoning_content or m.reasoning or '' %}
{%- if '</think>' in content %}
{%- if not reasoning %}{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}{%- endif %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n' }}
{%- if loop.index0 > ns.last_query and reasoning %}
{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}
{%- endif %}
{{- content }}
{%- for tc in m.tool_calls or [] %}
{%- set tool_call = tc.function if tc.function else tc %}
{%- if content or not loop.first %}{{- '\\n' }}{%- endif %}
{%- set args = tool_call.arguments if tool_call.arguments is string else (tool_call.arguments or {}) | tojson %}
{{- '<tool_call>\\n{"name": ' + (tool_call.name | tojson) + ', "arguments": ' + args + '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}
"""

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
