"""The demo model's Jinja chat template (Qwen3's ChatML format).

Written for this project, following Qwen3's public prompt format:
``<|im_start|>role\\n...<|im_end|>`` turns, tools listed as JSON inside
``<tools></tools>`` in the system turn, assistant tool calls as
``<tool_call>{"name", "arguments"}</tool_call>`` blocks, tool results as
``<tool_response>`` blocks inside a user turn, ``<think>`` reasoning dropped
from history before the last user query, and ``enable_thinking=false``
closing an empty think block after the generation prompt.

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
