"""`thread` on /v1/messages: the server keeps the conversation (system, tools, turns, reply) and a
`continue` request sends only its new turns (what the anthropic SDK's tool runner does)."""

from __future__ import annotations

import json

import httpx
import pytest

TOOLS = [{"name": "lookup_stock_price", "description": "Price of a stock.",
          "input_schema": {"type": "object", "properties": {"symbol": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def post(scripted_server):
    def call(path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{scripted_server.base_url}{path}", json={"model": "scripted", "max_tokens": 64, **body},
                          timeout=60)
    return call


def test_continue_carries_system_tools_and_turns(post):
    first = post("/v1/messages", {"system": "Be brief.", "tools": TOOLS, "thread": {"type": "create"},
                                  "messages": [{"role": "user", "content": "Which tools do you have?"}]})
    assert first.status_code == 200, first.text
    # the rule "lookup_stock_price" only matches when the kept tools are in the prompt
    assert first.json()["content"][0]["text"] == "I can see the lookup_stock_price tool."
    follow = {"messages": [{"role": "user", "content": "And now?"}]}
    alone = post("/v1/messages/count_tokens", follow).json()["input_tokens"]
    thread = {"type": "continue", "previous_message_id": first.json()["id"]}
    carried = post("/v1/messages/count_tokens", {**follow, "thread": thread}).json()["input_tokens"]
    assert carried > alone + 20
    second = post("/v1/messages", {**follow, "thread": thread})
    assert second.json()["content"][0]["text"] == "I can see the lookup_stock_price tool."
    # the continued conversation is kept under the new id, streaming too
    third = post("/v1/messages", {"messages": [{"role": "user", "content": "Again?"}], "stream": True,
                                  "thread": {"type": "continue", "previous_message_id": second.json()["id"]}})
    deltas = [json.loads(line[6:])["delta"] for line in third.text.splitlines()
              if line.startswith("data: ") and '"text_delta"' in line]
    assert "".join(d["text"] for d in deltas) == "I can see the lookup_stock_price tool."


def test_unknown_previous_message_and_bad_type(post):
    missing = post("/v1/messages", {"messages": [{"role": "user", "content": "hi"}],
                                    "thread": {"type": "continue", "previous_message_id": "msg_nope"}})
    assert missing.status_code == 404 and missing.json()["type"] == "error"
    bad = post("/v1/messages", {"messages": [{"role": "user", "content": "hi"}], "thread": {"type": "fork"}})
    assert bad.status_code == 400 and "thread.type" in bad.json()["error"]["message"]
