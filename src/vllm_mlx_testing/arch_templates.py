"""Jinja chat templates for the ``arch_models`` tiny models.

Written for this project after the public prompt formats of each family (no
vendor template text is copied); they reproduce what matters for prompt
caching and output parsing:

* ``qwen3_5`` -- ChatML (``<|im_start|>role\\n...<|im_end|>\\n``), tools as JSON
  lines in ``<tools>`` inside the system turn, tool calls in the qwen3_coder XML
  form (``<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>
  \\n</function>\\n</tool_call>``), tool results as ``<tool_response>`` blocks in
  one user turn per run of tool messages.  Thinking: the generation prompt is
  ``<|im_start|>assistant\\n<think>\\n`` (``enable_thinking=false``: an empty,
  closed think block); assistant reasoning (``reasoning_content`` or
  ``<think>...</think>`` in the content) is kept only after the last real user
  query (a user message that is not just a wrapped tool result).
* ``nemotron_h`` -- the same ChatML + XML-tools + thinking format (as in the
  Nemotron 3 Nano family), with a system turn that is always present.
* ``falcon_h1`` -- ``<|begin_of_text|>`` then ChatML, tools as JSON in the
  system turn, Hermes-style ``<tool_call>{"name", "arguments"}</tool_call>``,
  tool results in ``tool`` turns.
* ``lfm2`` -- ``<|startoftext|>`` then ChatML, ``List of tools: <|tool_list_start|>
  [...]<|tool_list_end|>`` in the system turn, pythonic calls in
  ``<|tool_call_start|>[f(a=1)]<|tool_call_end|>``, tool results in ``tool``
  turns wrapped in ``<|tool_response_start|>...<|tool_response_end|>``.
* ``gemma3`` -- ``<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>
  model\\n``; the system message (and the tool list, with pythonic
  ``[func_name1(...)]`` calls) is merged into the first user turn; tool
  results go in a user turn as ``tool_output`` blocks.
* ``gemma4`` -- Gemma 4's own markers: ``<bos><|turn>system\\n...<turn|>\\n``
  (a native system turn holding ``<|think|>`` when ``enable_thinking`` and the
  ``<|tool>declaration:NAME{...}<tool|>`` tool list), ``<|turn>user`` /
  ``<|turn>model`` turns, calls as ``<|tool_call>call:NAME{k:<|"|>v<|"|>}
  <tool_call|>`` and results as ``<|tool_response>response:NAME{...}
  <tool_response|>`` inside the same model turn, which the next assistant
  message continues; thoughts (``<|channel>thought...<channel|>``) of earlier
  turns are dropped.
* ``harmony`` (gpt-oss) -- ``<|start|>role<|message|>...<|end|>``: a fixed system
  message (date line constant, ``current_date`` may override it;
  ``reasoning_effort`` defaults to medium), a developer message with the
  instructions and a TypeScript-like ``namespace functions``, analysis /
  commentary / final channels, calls ``<|start|>assistant<|channel|>commentary
  to=functions.NAME <|constrain|>json<|message|>{...}<|call|>``, results
  ``<|start|>functions.NAME to=assistant<|channel|>commentary<|message|>...
  <|end|>``; analysis is kept only after the last user message; generation
  prompt ``<|start|>assistant``.
"""

from __future__ import annotations

from .chat_templates import QWEN3_CHAT_TEMPLATE, TEXT_OF_MACRO
from .glm_template import GLM45_TEMPLATE

# Tool-call / result names: tool messages take the names of the calls before them, in order.
_CALL_NAME = """\
{%- set tool_name = m.name or (ns.names[ns.k] if ns.k < (ns.names | length) else 'tool') %}
{%- set ns.k = ns.k + 1 %}"""


def _chatml_xml_template(always_system: bool) -> str:
    empty_system = "{{- '<|im_start|>system\\n<|im_end|>\\n' }}" if always_system else ""
    return TEXT_OF_MACRO + """\
{%- set ns = namespace(last_query=-1) %}
{%- for m in messages %}
{%- if m.role == 'user' %}
{%- set c = text_of(m.content) | trim %}
{%- if not (c.startswith('<tool_response>') and c.endswith('</tool_response>')) %}{%- set ns.last_query = loop.index0 %}{%- endif %}
{%- endif %}
{%- endfor %}
{%- set first_is_system = messages and messages[0].role == 'system' %}
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if first_is_system and text_of(messages[0].content) %}{{- text_of(messages[0].content) + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nThese functions are available:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nTo call one, reply with a block of this shape (one parameter block per argument):\\n' }}
{{- '<tool_call>\\n<function=function_name>\\n<parameter=argument_name>\\nargument value\\n</parameter>\\n</function>\\n</tool_call><|im_end|>\\n' }}
{%- elif first_is_system %}
{{- '<|im_start|>system\\n' + text_of(messages[0].content) + '<|im_end|>\\n' }}
{%- else %}""" + empty_system + """
{%- endif %}
{%- for m in messages %}
{%- set content = text_of(m.content) %}
{%- if m.role == 'system' %}
{%- if not loop.first %}{{- '<|im_start|>system\\n' + content + '<|im_end|>\\n' }}{%- endif %}
{%- elif m.role == 'user' %}
{{- '<|im_start|>user\\n' + content + '<|im_end|>\\n' }}
{%- elif m.role == 'assistant' %}
{%- set reasoning = m.reasoning_content or m.reasoning or '' %}
{%- if '</think>' in content %}
{%- if not reasoning %}{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}{%- endif %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n' }}
{%- if loop.index0 > ns.last_query %}{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}{%- endif %}
{{- content }}
{%- for tc in m.tool_calls or [] %}
{%- set call = tc.function if tc.function else tc %}
{%- if not loop.first %}{{- '\\n' }}{%- elif content | trim %}{{- '\\n\\n' }}{%- endif %}
{{- '<tool_call>\\n<function=' + call.name + '>\\n' }}
{%- if call.arguments is mapping %}
{%- for k, v in call.arguments.items() %}
{{- '<parameter=' + k + '>\\n' + (v if v is string else v | tojson) + '\\n</parameter>\\n' }}
{%- endfor %}
{%- elif call.arguments %}{{- call.arguments | string + '\\n' }}
{%- endif %}
{{- '</function>\\n</tool_call>' }}
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
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}
{%- else %}{{- '<think>\\n' }}{%- endif %}
{%- endif %}
"""


FALCON_H1_TEMPLATE = TEXT_OF_MACRO + """\
{{- bos_token }}
{%- set first_is_system = messages and messages[0].role == 'system' %}
{%- if tools or first_is_system %}
{{- '<|im_start|>system\\n' }}
{%- if first_is_system %}{{- text_of(messages[0].content) }}{%- endif %}
{%- if tools %}
{%- if first_is_system %}{{- '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call the functions described below:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each call, reply with a JSON object holding "name" and "arguments" inside <tool_call></tool_call> tags.' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- for m in messages %}
{%- set content = text_of(m.content) %}
{%- if m.role == 'system' and loop.first %}
{%- elif m.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' + content }}
{%- for tc in m.tool_calls or [] %}
{%- set tool_call = tc.function if tc.function else tc %}
{%- set args = tool_call.arguments if tool_call.arguments is string else (tool_call.arguments or {}) | tojson %}
{%- if content or not loop.first %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n{"name": ' + (tool_call.name | tojson) + ', "arguments": ' + args + '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{{- '<|im_start|>tool\\n<tool_response>\\n' + content + '\\n</tool_response><|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# Pythonic calls: [name(arg="text", n=3, flag=True)].
PY_CALLS_MACRO = """\
{%- macro py_value(v) -%}
{%- if v is string -%}{{- v | tojson -}}
{%- elif v is boolean -%}{{- 'True' if v else 'False' -}}
{%- elif v is none -%}None
{%- else -%}{{- v | tojson -}}
{%- endif -%}
{%- endmacro -%}
{%- macro py_calls(calls) -%}
[{%- for tc in calls -%}
{%- set call = tc.function if tc.function else tc -%}
{{- ', ' if not loop.first else '' -}}{{- call.name -}}(
{%- if call.arguments is mapping -%}
{%- for k, v in call.arguments.items() -%}{{- ', ' if not loop.first else '' -}}{{- k -}}={{- py_value(v) -}}{%- endfor -%}
{%- endif -%}
){%- endfor -%}]
{%- endmacro -%}
"""

LFM2_TEMPLATE = TEXT_OF_MACRO + PY_CALLS_MACRO + """\
{{- bos_token }}
{%- set first_is_system = messages and messages[0].role == 'system' %}
{%- if tools or first_is_system %}
{{- '<|im_start|>system\\n' }}
{%- if first_is_system %}{{- text_of(messages[0].content) }}{%- endif %}
{%- if tools %}
{%- if first_is_system %}{{- '\\n' }}{%- endif %}
{{- 'List of tools: <|tool_list_start|>[' }}
{%- for tool in tools %}{{- ', ' if not loop.first else '' }}{{- (tool.function if tool.function is defined else tool) | tojson }}{%- endfor %}
{{- ']<|tool_list_end|>' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- for m in messages %}
{%- set content = text_of(m.content) %}
{%- if m.role == 'system' and loop.first %}
{%- elif m.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- if m.tool_calls %}{{- '<|tool_call_start|>' + py_calls(m.tool_calls) + '<|tool_call_end|>' }}{%- endif %}
{{- content + '<|im_end|>\\n' }}
{%- elif m.role == 'tool' %}
{{- '<|im_start|>tool\\n<|tool_response_start|>' + content + '<|tool_response_end|><|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

GEMMA3_TEMPLATE = TEXT_OF_MACRO + PY_CALLS_MACRO + """\
{{- bos_token }}
{%- set ns = namespace(prefix='', start=0) %}
{%- if messages and messages[0].role == 'system' %}
{%- set ns.prefix = (text_of(messages[0].content) | trim) + '\\n\\n' %}
{%- set ns.start = 1 %}
{%- endif %}
{%- if tools %}
{%- set ns.prefix = ns.prefix + 'You can call functions. To call any, reply with only a list of calls like [func_name1(param_name1=value1, param_name2=value2), func_name2(param=value)]. The functions:\\n' %}
{%- for tool in tools %}{%- set ns.prefix = ns.prefix + ((tool.function if tool.function is defined else tool) | tojson) + '\\n' %}{%- endfor %}
{%- set ns.prefix = ns.prefix + '\\n' %}
{%- endif %}
{%- set loop_messages = messages[ns.start:] %}
{%- for m in loop_messages %}
{%- set content = text_of(m.content) | trim %}
{%- if m.role == 'tool' %}
{%- if loop.first or loop_messages[loop.index0 - 1].role != 'tool' %}{{- '<start_of_turn>user' }}{%- endif %}
{{- '\\n```tool_output\\n' + content + '\\n```' }}
{%- if loop.last or loop_messages[loop.index0 + 1].role != 'tool' %}{{- '<end_of_turn>\\n' }}{%- endif %}
{%- else %}
{{- '<start_of_turn>' + ('model' if m.role == 'assistant' else 'user') + '\\n' }}
{%- if loop.first %}{{- ns.prefix }}{%- endif %}
{{- content }}
{%- if m.role == 'assistant' and m.tool_calls %}{{- ('\\n' if content else '') + py_calls(m.tool_calls) }}{%- endif %}
{{- '<end_of_turn>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}
"""

GEMMA4_TEMPLATE = TEXT_OF_MACRO + """\
{%- macro g4(v) -%}
{%- if v is string -%}<|"|>{{- v -}}<|"|>
{%- elif v is mapping -%}{ {%- for k, x in v.items() -%}{{- ',' if not loop.first else '' -}}{{- k -}}:{{- g4(x) -}}{%- endfor -%} }
{%- elif v is iterable -%}[ {%- for x in v -%}{{- ',' if not loop.first else '' -}}{{- g4(x) -}}{%- endfor -%} ]
{%- elif v is boolean -%}{{- 'true' if v else 'false' -}}
{%- elif v is none -%}null
{%- else -%}{{- v | tojson -}}
{%- endif -%}
{%- endmacro -%}
{{- bos_token }}
{%- set ns = namespace(start=0, names=[], k=0) %}
{%- set thinking = enable_thinking is defined and enable_thinking %}
{%- set has_system = messages and messages[0].role == 'system' %}
{%- if has_system or tools or thinking %}
{{- '<|turn>system\\n' }}
{%- if thinking %}{{- '<|think|>' }}{%- endif %}
{%- if has_system %}{{- text_of(messages[0].content) | trim }}{%- set ns.start = 1 %}{%- endif %}
{%- for tool in tools or [] %}
{%- set f = tool.function if tool.function is defined else tool %}
{{- '<|tool>declaration:' + f.name + g4({'description': f.description or '', 'parameters': f.parameters or {}}) + '<tool|>' }}
{%- endfor %}
{{- '<turn|>\\n' }}
{%- endif %}
{%- set loop_messages = messages[ns.start:] %}
{%- for m in loop_messages %}
{%- set content = text_of(m.content) %}
{%- set previous = loop_messages[loop.index0 - 1].role if not loop.first else '' %}
{%- set following = loop_messages[loop.index0 + 1].role if not loop.last else '' %}
{%- if m.role == 'assistant' %}
{%- if previous != 'tool' %}{{- '<|turn>model\\n' }}{%- endif %}
{%- if '<channel|>' in content %}{%- set content = content.split('<channel|>')[-1] %}{%- endif %}
{{- content | trim }}
{%- set ns.names = [] %}{%- set ns.k = 0 %}
{%- for tc in m.tool_calls or [] %}
{%- set call = tc.function if tc.function else tc %}
{%- set ns.names = ns.names + [call.name] %}
{{- '<|tool_call>call:' + call.name + (g4(call.arguments) if call.arguments is mapping else '{' + (call.arguments or '') + '}') + '<tool_call|>' }}
{%- endfor %}
{%- if not (m.tool_calls and following == 'tool') %}{{- '<turn|>\\n' }}{%- endif %}
{%- elif m.role == 'tool' %}
""" + _CALL_NAME + """
{{- '<|tool_response>response:' + tool_name + g4({'value': content}) + '<tool_response|>' }}
{%- if following and following not in ('tool', 'assistant') %}{{- '<turn|>\\n' }}{%- endif %}
{%- else %}
{{- '<|turn>' + m.role + '\\n' + (content | trim) + '<turn|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt and not (loop_messages and loop_messages[-1].role == 'tool') %}{{- '<|turn>model\\n' }}{%- endif %}
"""

HARMONY_TEMPLATE = TEXT_OF_MACRO + """\
{%- macro ts_type(p) -%}
{%- if p.enum is defined and p.enum -%}{%- for e in p.enum -%}{{- ' | ' if not loop.first else '' -}}{{- e | tojson -}}{%- endfor -%}
{%- elif p.type == 'string' -%}string
{%- elif p.type == 'integer' or p.type == 'number' -%}number
{%- elif p.type == 'boolean' -%}boolean
{%- elif p.type == 'array' -%}{{- ts_type(p['items']) if 'items' in p else 'any' -}}[]
{%- elif p.type == 'object' -%}object
{%- else -%}any
{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(start=0, last_user=-1, names=[], k=0, instructions='') %}
{%- if messages and messages[0].role in ('system', 'developer') %}
{%- set ns.instructions = text_of(messages[0].content) %}{%- set ns.start = 1 %}
{%- endif %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- set effort = reasoning_effort if reasoning_effort is defined and reasoning_effort else 'medium' %}
{{- '<|start|>system<|message|>You are a helpful assistant, a large language model.\\nKnowledge cutoff: 2024-06\\n' }}
{{- 'Current date: ' + (current_date if current_date is defined and current_date else '2025-06-01') + '\\n\\nReasoning: ' + effort + '\\n\\n' }}
{{- '# Valid channels: analysis, commentary, final. Channel must be included for every message.' }}
{%- if tools %}{{- "\\nCalls to these tools must go to the commentary channel: 'functions'." }}{%- endif %}
{{- '<|end|>' }}
{%- if ns.instructions or tools %}
{{- '<|start|>developer<|message|>' }}
{%- if ns.instructions %}{{- '# Instructions\\n\\n' + ns.instructions + ('\\n\\n' if tools else '') }}{%- endif %}
{%- if tools %}
{{- '# Tools\\n\\n## functions\\n\\nnamespace functions {\\n\\n' }}
{%- for tool in tools %}
{%- set f = tool.function if tool.function is defined else tool %}
{%- set params = f.parameters or {} %}
{%- if f.description %}{{- '// ' + f.description + '\\n' }}{%- endif %}
{%- if params.get('properties') %}
{{- 'type ' + f.name + ' = (_: {\\n' }}
{%- for k, p in params.get('properties').items() %}
{%- if p.description %}{{- '// ' + p.description + '\\n' }}{%- endif %}
{{- k + ('' if k in (params.get('required') or []) else '?') + ': ' + ts_type(p) + ',\\n' }}
{%- endfor %}
{{- '}) => any;\\n\\n' }}
{%- else %}{{- 'type ' + f.name + ' = () => any;\\n\\n' }}
{%- endif %}
{%- endfor %}
{{- '} // namespace functions' }}
{%- endif %}
{{- '<|end|>' }}
{%- endif %}
{%- for m in messages[ns.start:] %}
{%- set content = text_of(m.content) %}
{%- set index = ns.start + loop.index0 %}
{%- if m.role == 'assistant' %}
{%- set reasoning = m.reasoning_content or m.thinking or m.reasoning or '' %}
{%- if index > ns.last_user and reasoning %}{{- '<|start|>assistant<|channel|>analysis<|message|>' + reasoning + '<|end|>' }}{%- endif %}
{%- if m.tool_calls %}
{%- if content %}{{- '<|start|>assistant<|channel|>commentary<|message|>' + content + '<|end|>' }}{%- endif %}
{%- set ns.names = [] %}{%- set ns.k = 0 %}
{%- for tc in m.tool_calls %}
{%- set call = tc.function if tc.function else tc %}
{%- set ns.names = ns.names + [call.name] %}
{%- set args = call.arguments if call.arguments is string else (call.arguments or {}) | tojson %}
{{- '<|start|>assistant<|channel|>commentary to=functions.' + call.name + ' <|constrain|>json<|message|>' + args + '<|call|>' }}
{%- endfor %}
{%- else %}
{{- '<|start|>assistant<|channel|>final<|message|>' + content + '<|end|>' }}
{%- endif %}
{%- elif m.role == 'tool' %}
""" + _CALL_NAME + """
{{- '<|start|>functions.' + tool_name + ' to=assistant<|channel|>commentary<|message|>' + content + '<|end|>' }}
{%- elif m.role == 'user' %}
{{- '<|start|>user<|message|>' + content + '<|end|>' }}
{%- else %}
{{- '<|start|>developer<|message|># Instructions\\n\\n' + content + '<|end|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}
"""

ARCH_TEMPLATES: dict[str, str] = {
    "qwen3_5": _chatml_xml_template(always_system=False),
    "qwen3": QWEN3_CHAT_TEMPLATE,
    "nemotron_h": _chatml_xml_template(always_system=True),
    "falcon_h1": FALCON_H1_TEMPLATE,
    "lfm2": LFM2_TEMPLATE,
    "gemma3": GEMMA3_TEMPLATE,
    "gemma4": GEMMA4_TEMPLATE,
    "harmony": HARMONY_TEMPLATE,
    "glm45": GLM45_TEMPLATE,
}
"""Chat templates by template name (``qwen3`` is the Qwen3 / Qwen3-Next Hermes-JSON one)."""
