"""Pipeline behaviour beyond the fixture corpus: no tools, holding back, truncation, malformed
calls, streaming granularity, speed."""

from __future__ import annotations

import json
import time

import pytest

from vllm_mlx.parsers import (
    ContentDelta,
    OutputPipeline,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    aggregate,
    get_reasoning_parser,
    get_tool_parser,
)

HERMES_TEXT = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'


def pipeline(tool: str | None = None, reasoning: str | None = None, tools=None, **kwargs) -> OutputPipeline:
    return OutputPipeline(
        get_reasoning_parser(reasoning)() if reasoning else None,
        get_tool_parser(tool)(tools) if tool else None,
        **kwargs,
    )


def feed_all(p: OutputPipeline, chunks) -> list:
    events = []
    for chunk in chunks:
        events.extend(p.feed(chunk))
    return events + p.finish()


def test_without_tools_a_tool_call_stays_content():
    result = aggregate(pipeline(None, "qwen3").run(HERMES_TEXT))
    assert result.tool_calls == []
    assert result.content == HERMES_TEXT
    assert '"city": "東京"' in result.content


def test_plain_answer_with_reasoning_parser_streams_content_only():
    events = feed_all(pipeline("hermes", "qwen3"), list("Hello there, no thinking here."))
    assert not any(isinstance(e, ReasoningDelta) for e in events)
    assert aggregate(events).content == "Hello there, no thinking here."
    # Content is not held until the end: it streams once it cannot be "<think>" any more.
    p = pipeline("hermes", "qwen3")
    assert p.feed("Hello") == [ContentDelta("Hello")]


def test_starts_in_reasoning_makes_text_before_close_tag_reasoning():
    p = pipeline(None, "qwen3", starts_in_reasoning=True)
    first = p.feed("Thinking hard")
    assert first == [ReasoningDelta("Thinking hard")]
    result = aggregate(first + p.feed("...</think>\n\nThe answer.") + p.finish())
    assert (result.reasoning, result.content) == ("Thinking hard...", "The answer.")


def test_prompt_opened_think_repeated_by_model_is_dropped():
    result = aggregate(pipeline(None, "qwen3", starts_in_reasoning=True).run("<think>\nHmm.</think>Yes."))
    assert (result.reasoning, result.content) == ("Hmm.", "Yes.")


def test_stray_close_tag_in_content_is_dropped():
    result = aggregate(pipeline(None, "deepseek_r1").run("Answer first</think> then more."))
    assert (result.reasoning, result.content) == ("", "Answer first then more.")


def test_possible_marker_is_held_back_then_released():
    p = pipeline("hermes")
    assert aggregate(p.feed("Hello <tool_")).content == "Hello"
    assert aggregate(p.feed("box> is a word")).content == " <tool_box> is a word"
    p = pipeline(None, "qwen3")
    assert p.feed("<thi") == []
    assert aggregate(p.feed("s is not a tag")).content == "<this is not a tag"


@pytest.mark.parametrize(
    "tool, text",
    [
        ("hermes", 'Let me check.<tool_call>\n{"name": "get_weather", "argu'),
        ("mistral", 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Pa'),
        ("deepseek_v3", "Ok.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_wea"),
        ("kimi_k2", "Ok.<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{"),
        ("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"a":'),
        ("pythonic", '[get_weather(city="Par'),
        ("glm45", "<tool_call>get_wea"),
        ("lfm2", 'Ok.<|tool_call_start|>[f(a="b"'),
    ],
)
def test_truncated_call_is_kept_as_text(tool, text):
    for chunks in ([text], list(text)):
        result = aggregate(feed_all(pipeline(tool), chunks))
        assert result.tool_calls == []
        assert result.content == text


def test_complete_call_missing_only_its_closing_marker_is_accepted():
    for tool, text in [
        ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1}}'),
        ("lfm2", '<|tool_call_start|>[f(a=1)]'),
        ("nemotron_json", '<TOOLCALL>[{"name": "f", "arguments": {"a": 1}}]</TOOL'),
    ]:
        result = aggregate(pipeline(tool).run(text))
        assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", '{"a": 1}')], tool
        assert result.content == ""


def test_truncated_streamed_call_is_closed_and_the_rest_kept_as_text():
    text = (
        "<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n"
        "<parameter=content>\nhalf a line"
    )
    for chunks in ([text], list(text)):
        events = feed_all(pipeline("qwen3_coder"), chunks)
        result = aggregate(events)
        assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("write_file", {"path": "a.txt"})]
        assert result.content == "<parameter=content>\nhalf a line"
        assert [type(e) for e in events[-2:]] == [ToolCallEnd, ContentDelta]


def test_harmony_call_without_json_body_at_the_end_is_kept_as_text():
    text = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"loc"
    result = aggregate(pipeline("openai").run(text))
    assert result.tool_calls == []
    assert result.content.endswith('{"loc')


def test_malformed_json_in_a_closed_block_stays_text():
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1,}}\n</tool_call>'
    result = aggregate(pipeline("hermes").run(text))
    assert result.tool_calls == []
    assert result.content == text


def test_indices_and_names_with_text_between_calls():
    text = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call> and then '
        '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call> finally '
        '<tool_call>{"name": "c", "arguments": {"y": [2]}}</tool_call>'
    )
    events = feed_all(pipeline("hermes"), list(text))
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "a"), (1, "b"), (2, "c")]
    assert len({s.id for s in starts}) == 3
    assert aggregate(events).content == "and then finally"


def test_argument_elements_stream_before_the_call_closes():
    p = pipeline("qwen3_coder")
    events = p.feed("<tool_call>\n<function=search>\n<parameter=q>\nmlx\n</parameter>\n")
    assert [type(e) for e in events] == [ToolCallStart, ToolCallArgsDelta]
    assert events[1].text == '{"q": "mlx"'
    rest = p.feed("<parameter=n>\n2\n</parameter>\n</function>\n</tool_call>") + p.finish()
    assert "".join(e.text for e in rest if isinstance(e, ToolCallArgsDelta)) == ', "n": "2"}'


def test_repeated_parameter_keeps_first_value():
    text = (
        "<tool_call>get\n<arg_key>k</arg_key><arg_value>1</arg_value>"
        "<arg_key>k</arg_key><arg_value>2</arg_value></tool_call>"
    )
    result = aggregate(pipeline("glm45").run(text))
    assert json.loads(result.tool_calls[0].arguments) == {"k": "1"}


def test_harmony_reasoning_parser_without_tools_shows_call_body_as_content():
    text = (
        "<|channel|>analysis<|message|>Think.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": 1}<|call|>'
    )
    result = aggregate(pipeline(None, "openai_gptoss").run(text))
    assert (result.reasoning, result.content, result.tool_calls) == ("Think.", '{"a": 1}', [])


def test_harmony_tool_parser_takes_precedence_over_a_reasoning_parser():
    text = '<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>final<|message|>y<|return|>'
    p = pipeline("openai", "qwen3")
    assert p.reasoning is None
    result = aggregate(p.run(text))
    assert (result.reasoning, result.content) == ("x", "y")


def test_output_without_harmony_markup_is_content():
    result = aggregate(pipeline("openai").run("Just text, no channels."))
    assert (result.reasoning, result.content) == ("", "Just text, no channels.")


def test_trim_whitespace_off_keeps_text_byte_for_byte():
    text = "\n  Hello\n\n"
    assert aggregate(pipeline(None, None, trim_whitespace=False).run(text)).content == text


def test_only_markup_whitespace_is_trimmed():
    # a plain answer keeps every byte; whitespace next to markup goes
    assert aggregate(pipeline(None, None).run("\n  Hello\n\n")).content == "\n  Hello\n\n"
    result = aggregate(pipeline(None, "qwen3").run("<think>\nplan\n</think>\n\n  Answer.\n"))
    assert (result.reasoning, result.content) == ("plan", "Answer.\n")


def test_feed_after_finish_is_an_error():
    p = pipeline("hermes")
    p.run("done")
    with pytest.raises(RuntimeError):
        p.feed("more")
    assert p.finish() == []


def test_long_arguments_fed_one_character_at_a_time_stay_fast():
    body = "x" * 20000
    cases = [
        ("hermes", '<tool_call>{"name": "w", "arguments": {"s": "' + body + '"}}</tool_call>'),
        ("mistral", '[TOOL_CALLS]w[ARGS]{"s": "' + body + '"}'),
        ("qwen3_coder", "<tool_call><function=w><parameter=s>" + body + "</parameter></function></tool_call>"),
        ("pythonic", '[w(s="' + body + '")]'),
        ("openai", '<|channel|>commentary to=functions.w<|message|>{"s": "' + body + '"}<|call|>'),
    ]
    for tool, text in cases:
        started = time.perf_counter()
        result = aggregate(feed_all(pipeline(tool), list(text)))
        assert time.perf_counter() - started < 3.0, tool
        assert json.loads(result.tool_calls[0].arguments) == {"s": body}


def test_consecutive_calls_whose_arguments_start_at_the_same_offset():
    # After the first call is consumed, the second call's JSON starts at the same buffer index
    # the first one did; nothing cached about the first may leak into the second.
    first = '<|python_tag|>{"name": "a", "parameters": {}};'
    text = first + " " * 13 + '{"name": "bb", "parameters": {"x": [1, 2, 3]}}'
    for chunks in ([text], list(text)):
        result = aggregate(feed_all(pipeline("llama3_json"), chunks))
        assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("a", {}), ("bb", {"x": [1, 2, 3]})]


def test_harmony_header_that_never_ends_is_text():
    text = "<|start|>" + "x" * 3000 + " and more"
    for chunks in ([text], [text[i : i + 7] for i in range(0, len(text), 7)]):
        result = aggregate(feed_all(pipeline("openai"), chunks))
        assert (result.reasoning, result.content, result.tool_calls) == ("", text, [])
