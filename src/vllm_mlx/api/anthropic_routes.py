"""Anthropic adapter: POST /v1/messages and /v1/messages/count_tokens, plus GET/HEAD / for probes.

Requests go through the chat pipeline (see anthropic_protocol.to_chat_request): the same template
rendering, sampling parameters, constraints and output parsers as /v1/chat/completions. Parser
events become content blocks: reasoning -> thinking, content -> text, tool calls -> tool_use.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine.request import FinishReason, GenerationOutput
from ..parsers import ContentDelta, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from .anthropic_protocol import MessagesRequest, to_chat_request
from .anthropic_threads import MessageThreads
from ..serving.chat_output import OutputParsing
from .errors import APIError, anthropic_error_body, generation_failure
from .model_registry import serving_for
from .streaming import collect, keepalive_interval, request_id_headers, sse, with_keepalive
from .operator_routes import page_response, wants_html
from ..serving.chat import MESSAGES_POLICY

router = APIRouter()

# Thinking blocks need a signature; a local model has nothing to sign, so this marks them as ours.
THINKING_SIGNATURE = "vllm-mlx-local"


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _threads(raw: Request) -> MessageThreads:
    threads = getattr(raw.app.state, "message_threads", None)
    if threads is None:
        threads = raw.app.state.message_threads = MessageThreads()
    return threads


@dataclass
class BlockBuilder:
    """Parser events -> Anthropic content blocks, as stream events and as the final block list."""

    parsing: OutputParsing
    blocks: list[dict] = field(default_factory=list)
    saw_tool_use: bool = False
    _open: str | None = None  # type of the block being written
    _args: str = ""

    def __post_init__(self):
        self.pipeline = self.parsing.pipeline()

    def feed(self, text: str) -> list[str]:
        if not text:
            return []
        if self.pipeline is None:
            return self._events([ContentDelta(text)])
        return self._events(self.pipeline.feed(text))

    def finish(self) -> list[str]:
        out = self._events(self.pipeline.finish()) if self.pipeline is not None else []
        return out + self._close()

    def _start(self, block: dict) -> list[str]:
        out = self._close()
        self.blocks.append(block)
        self._open = block["type"]
        self._args = ""
        empty = {**block, "input": {}} if block["type"] == "tool_use" else block
        return out + [sse(event="content_block_start", payload={"type": "content_block_start",
                                                        "index": len(self.blocks) - 1, "content_block": empty})]

    def _delta(self, delta: dict) -> str:
        return sse(event="content_block_delta", payload={"type": "content_block_delta", "index": len(self.blocks) - 1,
                                                 "delta": delta})

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        out = []
        block = self.blocks[-1]
        if self._open == "thinking":
            block["signature"] = THINKING_SIGNATURE
            out.append(self._delta({"type": "signature_delta", "signature": THINKING_SIGNATURE}))
        elif self._open == "tool_use":
            try:
                block["input"] = json.loads(self._args) if self._args.strip() else {}
            except json.JSONDecodeError:
                block["input"] = {}
        self._open = None
        return out + [sse(event="content_block_stop", payload={"type": "content_block_stop", "index": len(self.blocks) - 1})]

    def _events(self, events) -> list[str]:
        out: list[str] = []
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                if self._open != "thinking":
                    out += self._start({"type": "thinking", "thinking": "", "signature": ""})
                self.blocks[-1]["thinking"] += ev.text
                out.append(self._delta({"type": "thinking_delta", "thinking": ev.text}))
            elif isinstance(ev, ContentDelta):
                if self._open != "text":
                    out += self._start({"type": "text", "text": ""})
                self.blocks[-1]["text"] += ev.text
                out.append(self._delta({"type": "text_delta", "text": ev.text}))
            elif isinstance(ev, ToolCallStart):
                self.saw_tool_use = True
                out += self._start({"type": "tool_use", "id": ev.id, "name": ev.name, "input": {}})
            elif isinstance(ev, ToolCallArgsDelta) and self._open == "tool_use":
                self._args += ev.text
                out.append(self._delta({"type": "input_json_delta", "partial_json": ev.text}))
            elif isinstance(ev, ToolCallEnd):
                out += self._close()
        return out


def _stop_reason(last: GenerationOutput | None, saw_tool_use: bool) -> tuple[str, str | None]:
    if last is None or last.finish_reason is None:
        return "end_turn", None
    if last.finish_reason is FinishReason.LENGTH:
        return "max_tokens", None
    if last.finish_reason is FinishReason.CANCELLED:  # a tool call cut short is no call to make
        return "end_turn", None
    if last.stop_sequence is not None:
        return "stop_sequence", last.stop_sequence
    if saw_tool_use:
        return "tool_use", None
    return "end_turn", None


# The Messages API has no stop reason for a cancel: a cancelled message ends as a normal turn
# ("end_turn", which every client handles) and says why in stop_details, as refusals do.
CANCELLED_DETAILS = {"type": "cancelled", "category": None,
                     "explanation": "cancelled on the server (POST /v1/requests/{id}/cancel)"}


def _stop_details(last: GenerationOutput | None) -> dict:
    """``{"stop_details": ...}`` for a cancelled message, to merge into its end; empty otherwise."""
    cancelled = last is not None and last.finish_reason is FinishReason.CANCELLED
    return {"stop_details": CANCELLED_DETAILS} if cancelled else {}


def _usage(out: GenerationOutput | None, prompt_len: int) -> dict:
    """Anthropic usage: input_tokens excludes the prompt tokens read from the prefix cache."""
    cached = out.cached_tokens if out else 0
    return {"input_tokens": (out.prompt_tokens if out else prompt_len) - cached,
            "output_tokens": out.completion_tokens if out else 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


@router.post("/v1/messages")
async def messages(req: MessagesRequest, raw: Request):
    state = await serving_for(raw, req.model)
    if req.model_extra:
        state.warn_unknown_fields(req, "/v1/messages")  # type: ignore[arg-type]
    threads = _threads(raw)
    req = threads.expand(req)
    chat = to_chat_request(req)
    message_id = _message_id()
    run = await state.start_chat(chat, message_id, MESSAGES_POLICY)
    stream, parsing = run.stream, run.parsing
    if req.stream:
        def done(blocks: list[dict]) -> None:
            threads.remember(req, message_id, blocks)

        return StreamingResponse(_stream(with_keepalive(stream, keepalive_interval(raw)), message_id,
                                         state.model_name, parsing, run.prompt_tokens, done),
                                 media_type="text/event-stream", headers=_id_headers(message_id))
    choice = (await collect(stream, raw, 1))[0]
    if choice.last.finish_reason is FinishReason.ABORT:  # ended by a shutdown: not a normal end
        raise APIError(503, "the server ended this request before it finished", code="request_aborted")
    builder = BlockBuilder(parsing)
    builder.feed(choice.text)
    builder.finish()
    threads.remember(req, message_id, builder.blocks)
    stop_reason, stop_sequence = _stop_reason(choice.last, builder.saw_tool_use)
    return JSONResponse({
        "id": message_id, "type": "message", "role": "assistant", "model": state.model_name,
        "content": builder.blocks, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        **_stop_details(choice.last), "usage": _usage(choice.last, run.prompt_tokens),
    }, headers=_id_headers(message_id))


def _id_headers(message_id: str) -> dict[str, str]:
    """x-request-id, as on every generation; request-id too, which the anthropic SDK shows as ._request_id."""
    return {**request_id_headers(message_id), "request-id": message_id}


async def _stream(stream: AsyncIterator[GenerationOutput], message_id: str, model: str, parsing: OutputParsing,
                  prompt_len: int, done=None) -> AsyncIterator[str]:
    builder = BlockBuilder(parsing)
    last: GenerationOutput | None = None
    started = False

    def message_start(out: GenerationOutput | None) -> list[str]:
        usage = {**_usage(out, prompt_len), "output_tokens": 0}
        return [sse(event="message_start", payload={"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}}), sse(event="ping", payload={"type": "ping"})]

    async for out in stream:
        if out is None:  # no token yet: message_start (once), then a ping, to keep the connection alive
            if not started:
                started = True
                for event in message_start(None):
                    yield event
            else:
                yield sse(event="ping", payload={"type": "ping"})
            continue
        if out.finish_reason is FinishReason.ERROR:
            failure = generation_failure(out)
            yield sse(event="error", payload=anthropic_error_body(failure.status, failure.message))
            return
        if out.finish_reason is FinishReason.ABORT:  # ended by the server (shutdown): say so, not end_turn
            yield sse(event="error", payload=anthropic_error_body(503, "the server ended this request before it finished"))
            return
        if not started:  # sent with the first output, so the usage knows the cached prompt tokens
            started = True
            for event in message_start(out):
                yield event
        last = out
        for event in builder.feed(out.text):
            yield event
        if out.finished:
            break
    if not started:
        for event in message_start(None):
            yield event
    for event in builder.finish():
        yield event
    if done is not None:
        done(builder.blocks)
    stop_reason, stop_sequence = _stop_reason(last, builder.saw_tool_use)
    yield sse(event="message_delta", payload={"type": "message_delta",
                                      "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence,
                                                **_stop_details(last)},
                                      "usage": _usage(last, prompt_len)})
    yield sse(event="message_stop", payload={"type": "message_stop"})


@router.post("/v1/messages/count_tokens")
async def count_tokens(req: MessagesRequest, raw: Request):
    state = await serving_for(raw, req.model)
    _, rendered = await state.prepare_prompt(to_chat_request(_threads(raw).expand(req)))
    return JSONResponse({"input_tokens": len(rendered.ids)})


@router.api_route("/", methods=["GET", "HEAD"])
async def root(raw: Request):
    """Liveness for clients that probe the base URL (Claude Code sends HEAD /)."""
    if raw.method == "HEAD":
        return Response(status_code=200)
    if wants_html(raw):  # a browser: the status page and chat playground
        return page_response()
    return JSONResponse({"status": "ok", "apis": ["/v1/chat/completions", "/v1/completions", "/v1/messages"]})
