"""Server-kept conversations on /v1/messages (the request's `thread` field).

`{"thread": {"type": "create"}}` starts a thread: the request's system prompt, tools, tool_choice
and messages, plus the reply, are kept under the reply's message id.
`{"thread": {"type": "continue", "previous_message_id": ID}}` sends only the new turns (the
anthropic SDK's tool runner sends just the tool results): the kept conversation comes first, and
the kept system prompt, tools and tool_choice apply unless the request gives its own. The
continued conversation is kept again under the new reply's id. Like Responses'
`previous_response_id`, the store is in memory and bounded (least recently used dropped).
"""

from __future__ import annotations

from typing import Any

from .anthropic_protocol import MessagesRequest
from .errors import APIError
from .lru_store import LRUStore

DEFAULT_THREADS = 1024
CARRIED = ("system", "tools", "tool_choice")


class MessageThreads(LRUStore[dict[str, Any]]):
    def __init__(self, capacity: int = DEFAULT_THREADS):
        super().__init__(capacity)

    def expand(self, req: MessagesRequest) -> MessagesRequest:
        """The full request a `thread` request stands for (itself when it has none or starts one)."""
        thread = req.thread
        if thread is None:
            return req
        kind = thread.get("type")
        if kind == "create":
            return req
        if kind != "continue":
            raise APIError(400, f"thread.type must be 'create' or 'continue', not {kind!r}", param="thread.type")
        previous = thread.get("previous_message_id")
        if not isinstance(previous, str) or not previous:
            raise APIError(400, "a 'continue' thread needs previous_message_id", param="thread.previous_message_id")
        kept = self.get(previous)
        if kept is None:
            raise APIError(404, f"no thread message with id {previous!r} (it may have expired)",
                           param="thread.previous_message_id")
        data = req.model_dump(exclude_unset=True)
        for key in CARRIED:
            if data.get(key) is None and kept.get(key) is not None:
                data[key] = kept[key]
        data["messages"] = kept["messages"] + data["messages"]
        return MessagesRequest.model_validate(data)

    def remember(self, req: MessagesRequest, message_id: str, reply_blocks: list[dict]) -> None:
        """Keep a thread request's conversation and its reply under the reply's id."""
        if req.thread is None:
            return
        kept = {key: getattr(req, key) for key in CARRIED}
        messages = [m.model_dump(exclude_unset=True) for m in req.messages]
        self.put(message_id, {**kept, "messages": messages + [{"role": "assistant", "content": reply_blocks}]})
