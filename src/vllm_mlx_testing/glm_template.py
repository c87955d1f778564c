"""The GLM-4.5 family's chat template for the ``arch_models`` tiny models (``glm4_moe``,
``glm4_moe_lite``), written for this project after the family's public prompt format (no vendor
template text is copied); what matters for prompt caching and output parsing:

``[gMASK]<sop>`` once, then turns opened by a role token and a newline -- ``<|system|>``,
``<|user|>``, ``<|assistant|>``, ``<|observation|>`` (tool results, each in ``<tool_response>``)
-- with no closing token: the model ends its turn by emitting the next role's token (``<|user|>``
or ``<|observation|>``, EOS ids). Tools are listed as JSON lines in ``<tools>`` in a system turn;
calls are ``<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n</tool_call>``
(string values bare, others as JSON). Assistant turns open with a think block
(``<think>...</think>``): reasoning is kept after the last user message only, earlier turns get an
empty one. ``enable_thinking=false`` appends ``/nothink`` to user messages and closes an empty
think block in the generation prompt.
"""

from __future__ import annotations

from .chat_templates import TEXT_OF_MACRO

GLM45_TEMPLATE = TEXT_OF_MACRO + """\
{{- '[gMASK]<sop>' }}
{%- set no_think = enable_thinking is defined and not enable_thinking %}
{%- if tools %}
{{- '<|system|>\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'Function signatures are listed in <tools></tools>:\\n<tools>\\n' }}
{%- for tool in tools %}{{- (tool.function if tool.function else tool) | tojson + '\\n' }}{%- endfor %}
{{- '</tools>\\n\\nTo call a function, write its name and arguments in this form:\\n' }}
{{- '<tool_call>{name}\\n<arg_key>{key}</arg_key>\\n<arg_value>{value}</arg_value>\\n...\\n</tool_call>' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- for m in messages %}
{%- set content = text_of(m.content) %}
{%- if m.role == 'system' %}
{{- '<|system|>\\n' + content }}
{%- elif m.role == 'user' %}
{{- '<|user|>\\n' + content }}
{%- if no_think and not content.endswith('/nothink') %}{{- '/nothink' }}{%- endif %}
{%- elif m.role == 'assistant' %}
{%- set reasoning = m.reasoning_content or '' %}
{%- if not reasoning and '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}
{%- set content = content.split('</think>')[-1] %}
{%- endif %}
{{- '<|assistant|>' }}
{%- if loop.index0 > ns.last_user and reasoning %}{{- '\\n<think>' + reasoning.strip() + '</think>' }}
{%- else %}{{- '\\n<think></think>' }}{%- endif %}
{%- if content.strip() %}{{- '\\n' + content.strip() }}{%- endif %}
{%- for tc in m.tool_calls or [] %}
{%- set call = tc.function if tc.function else tc %}
{%- set args = call.arguments %}
{{- '\\n<tool_call>' + call.name + '\\n' }}
{%- if args is mapping %}
{%- for key, value in args.items() %}
{{- '<arg_key>' + key + '</arg_key>\\n<arg_value>' + (value if value is string else value | tojson) + '</arg_value>\\n' }}
{%- endfor %}
{%- elif args %}{{- args | string + '\\n' }}
{%- endif %}
{{- '</tool_call>' }}
{%- endfor %}
{%- elif m.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|observation|>' }}{%- endif %}
{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|assistant|>' }}{%- if no_think %}{{- '\\n<think></think>' }}{%- endif %}
{%- endif %}
"""
