"""Property tests on request validation, API by API: NaN/inf/negative/huge numbers, wrong types, bad
roles, empty and oversized inputs. Whatever the request, the answer is a 2xx or a 4xx in the API's
own error shape — never a 5xx, never an exception in the server log, and the engine keeps serving.

Short by default; VLLM_MLX_PROPERTY_EXAMPLES=1000 is the long form (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_support import log_problems, problems

EXAMPLES = int(os.environ.get("VLLM_MLX_PROPERTY_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

NUMBERS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 1, -1e308, 1e308, 2**63, 2**64, -2**63, 10**30, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-2**70, max_value=2**70),
)
WRONG_TYPES = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
VALUES = st.one_of(NUMBERS, WRONG_TYPES)
ROLES = st.one_of(st.sampled_from(["user", "assistant", "system", "tool", "developer", "function"]),
                  st.text(max_size=12), st.none(), st.integers())
CONTENT = st.one_of(st.text(max_size=40), st.none(), st.integers(), st.just("x " * 3000),
                    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "bogus"]),
                                                    "text": st.text(max_size=10)}), max_size=2))
TOOL_CALLS = st.lists(st.one_of(WRONG_TYPES, st.fixed_dictionaries(
    {"id": st.text(max_size=4), "type": st.just("function"),
     "function": st.one_of(WRONG_TYPES, st.fixed_dictionaries({"name": st.one_of(st.text(max_size=6), st.integers()),
                                                               "arguments": st.one_of(st.text(max_size=10), VALUES)}))})),
    max_size=2)
MESSAGES = st.one_of(
    st.lists(st.fixed_dictionaries({"role": ROLES, "content": CONTENT},
                                   optional={"tool_calls": TOOL_CALLS, "name": VALUES, "tool_call_id": VALUES}),
             min_size=0, max_size=4),
    st.just([{"role": "user", "content": "hi"}] * 65),  # over --max-messages
    WRONG_TYPES,
)

CHAT_FIELDS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n", "seed",
               "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "logprobs",
               "top_logprobs", "max_thinking_tokens", "stop", "stop_token_ids", "logit_bias", "stream",
               "tools", "tool_choice", "response_format", "ignore_eos"]
COMPLETION_FIELDS = ["max_tokens", "temperature", "top_p", "top_k", "n", "seed", "logprobs", "best_of",
                     "min_tokens", "presence_penalty", "stop", "logit_bias", "stream", "prompt", "echo"]
ANTHROPIC_FIELDS = ["max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream", "system",
                    "thinking", "tools", "tool_choice", "metadata"]
RESPONSES_FIELDS = ["max_output_tokens", "temperature", "top_p", "top_logprobs", "input", "instructions",
                    "stream", "tools", "tool_choice", "text", "reasoning"]


def _logit_bias():
    return st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-5, 5000).map(str)), NUMBERS, max_size=2)


def _mutations(fields: list[str]):
    extra = {"logit_bias": _logit_bias(), "messages": MESSAGES}
    return st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: extra.get(k, VALUES) for k in keys}))


def _send(server, path: str, body: dict) -> list[str]:
    """POST the body (NaN/Infinity written as JSON5-style literals, as Python clients do)."""
    data = json.dumps(body, allow_nan=True)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{server.base_url}{path}", content=data,
                           headers={"content-type": "application/json"}) as resp:
            text = resp.read().decode(errors="replace")
    found = problems(path, resp.status_code, resp.headers.get("content-type", ""), text)
    if resp.status_code == 200 and "event-stream" not in resp.headers.get("content-type", ""):
        json.loads(text)  # a 200 is a whole JSON body
    return [f"{path} {p} for {data[:300]}" for p in found]


@pytest.fixture(scope="module")
def server(fuzz_server):
    yield fuzz_server
    assert fuzz_server.proc.poll() is None, "the server died"
    assert not log_problems(fuzz_server.log())
    assert httpx.get(f"{fuzz_server.base_url}/health", timeout=5).status_code == 200


def _check(server, path: str, base: dict, mutation: dict) -> None:
    found = _send(server, path, {**base, **mutation})
    assert not found, "\n".join(found)


@SETTINGS
@given(mutation=_mutations(CHAT_FIELDS + ["messages"]))
def test_chat_completions_validation(server, mutation):
    _check(server, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, mutation)


@SETTINGS
@given(mutation=_mutations(COMPLETION_FIELDS))
def test_completions_validation(server, mutation):
    _check(server, "/v1/completions", {"model": "m", "prompt": "hi"}, mutation)


@SETTINGS
@given(mutation=_mutations(ANTHROPIC_FIELDS + ["messages"]))
def test_anthropic_messages_validation(server, mutation):
    _check(server, "/v1/messages", {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
           mutation)


@SETTINGS
@given(mutation=_mutations(ANTHROPIC_FIELDS + ["messages"]))
def test_anthropic_count_tokens_validation(server, mutation):
    _check(server, "/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
           mutation)


@SETTINGS
@given(mutation=_mutations(RESPONSES_FIELDS))
def test_responses_validation(server, mutation):
    _check(server, "/v1/responses", {"model": "m", "input": "hi"}, mutation)


EMBEDDING_INPUTS = st.one_of(VALUES, st.text(max_size=30), st.lists(st.text(max_size=10), max_size=3),
                             st.lists(st.integers(-5, 100000), max_size=5),
                             st.lists(st.lists(st.integers(-5, 100000), max_size=4), max_size=3))


@SETTINGS
@given(mutation=st.fixed_dictionaries({}, optional={"input": EMBEDDING_INPUTS, "dimensions": VALUES,
                                                    "encoding_format": st.one_of(VALUES, st.just("base64"))}))
def test_embeddings_validation(server, mutation):
    _check(server, "/v1/embeddings", {"model": "m", "input": "hi"}, mutation)


@SETTINGS
@given(mutation=st.fixed_dictionaries({}, optional={"query": st.one_of(VALUES, st.text(max_size=20)),
                                                    "documents": st.one_of(VALUES, EMBEDDING_INPUTS),
                                                    "top_n": VALUES}))
def test_rerank_validation(server, mutation):
    _check(server, "/v1/rerank", {"model": "m", "query": "a", "documents": ["b", "c"]}, mutation)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": math.nan}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": math.inf}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**30}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": math.nan}}),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 5000}]}),
    ("/v1/completions", {"prompt": [], "max_tokens": -1}),
    ("/v1/completions", {"prompt": [[1, 2], []]}),
    ("/v1/completions", {"prompt": [10**12]}),
    ("/v1/messages", {"max_tokens": 4, "messages": [{"role": "user", "content": []}]}),
    ("/v1/messages", {"max_tokens": -4, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages/count_tokens", {"messages": []}),
    ("/v1/responses", {"input": [], "max_output_tokens": math.inf}),
    ("/v1/embeddings", {"input": math.nan}),
    ("/v1/embeddings", {"input": "hi", "dimensions": -1}),
    ("/v1/embeddings", {"input": [[10**12]]}),
])
def test_known_bad_inputs_are_4xx(server, path, body):
    data = json.dumps({"model": "m", **body}, allow_nan=True)
    resp = httpx.post(f"{server.base_url}{path}", content=data, headers={"content-type": "application/json"},
                      timeout=60)
    assert 400 <= resp.status_code < 500, resp.text
    assert not problems(path, resp.status_code, resp.headers.get("content-type", ""), resp.text)
