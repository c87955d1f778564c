"""OpenAI adapter: /v1/chat/completions, through the reasoning/tool-call pipeline."""

from __future__ import annotations

import json
import time
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine.request import FinishReason, GenerationOutput
from ..serving.chat_output import ChatDeltaStream, OutputParsing, chat_message
from .errors import APIError, error_body, generation_failure
from .logprobs import TokenText, chat_logprobs
from .mcp_chat import mcp_chat, wants_mcp
from .model_registry import serving_for
from .openai_routes import choices_usage, count_text_tokens, openai_usage
from .streaming import KEEPALIVE_COMMENT, collect, keepalive_interval, request_id_headers, sse, with_keepalive
from ..serving.requests import new_id
from .protocol import ChatCompletionRequest
from ..serving.state import finish_reason_text

router = APIRouter()


def _finish(reason: FinishReason | None, tool_calls: bool) -> str | None:
    if tool_calls and reason is FinishReason.STOP:
        return "tool_calls"
    return finish_reason_text(reason)


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, raw: Request):
    state = await serving_for(raw, req.model)
    state.admit(req, "/v1/chat/completions")
    if wants_mcp(req, raw):
        return await mcp_chat(req, raw)
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    request_id = new_id("chatcmpl")
    run = await state.start_chat(req, request_id, logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0)
    stream, parsing = run.stream, run.parsing
    token_text = TokenText(state.tokenizer) if req.logprobs else None
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _chat_stream(with_keepalive(stream, keepalive_interval(raw)), request_id, created, state.model_name,
                         req.n, include_usage, token_text, parsing, state.tokenizer),
            media_type="text/event-stream", headers=request_id_headers(request_id),
        )
    choices = await collect(stream, raw, req.n)
    body_choices, reasoning = [], []
    for i, c in enumerate(choices):
        message, has_calls = chat_message(parsing, c.text)
        reasoning.append(message.get("reasoning_content") or "")
        body_choices.append({
            "index": i,
            "message": message,
            "logprobs": chat_logprobs(c.logprobs, token_text) if token_text else None,
            "finish_reason": _finish(c.last.finish_reason, has_calls),
        })
    return JSONResponse({
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": state.model_name,
        "choices": body_choices,
        "usage": choices_usage(choices, count_text_tokens(state.tokenizer, reasoning)),
    }, headers=request_id_headers(request_id))


async def _chat_stream(
    stream: AsyncIterator[GenerationOutput], request_id: str, created: int, model: str, n: int,
    include_usage: bool, token_text: TokenText | None, parsing: OutputParsing, tokenizer,
) -> AsyncIterator[str]:
    # Every chunk shares its head and tail: serialized once, only the choice is encoded per token.
    head = "data: " + json.dumps({"id": request_id, "object": "chat.completion.chunk", "created": created,
                                  "model": model}, ensure_ascii=False)[:-1] + ', "choices": [{"index": '
    tail = "}]" + (', "usage": null' if include_usage else "") + "}\n\n"

    def chunk(index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> str:
        return (f"{head}{index}, \"delta\": {json.dumps(delta, ensure_ascii=False)}, \"logprobs\": "
                f"{'null' if logprobs is None else json.dumps(logprobs, ensure_ascii=False)}, \"finish_reason\": "
                f"{'null' if finish is None else json.dumps(finish)}{tail}")

    parsers = [ChatDeltaStream(parsing) for _ in range(n)]
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    prompt_tokens, cached, completion = 0, 0, [0] * n
    async for out in stream:
        if out is None:  # no token yet: keep the connection alive
            yield KEEPALIVE_COMMENT
            continue
        if out.finish_reason is FinishReason.ERROR:
            failure = generation_failure(out)
            yield sse(error_body(failure.status, failure.message, code=failure.code))
            break
        prompt_tokens, cached, completion[out.index] = out.prompt_tokens, out.cached_tokens, out.completion_tokens
        parser = parsers[out.index]
        deltas = parser.feed(out.text)
        if out.finished:
            deltas += parser.finish()
        logprobs = chat_logprobs(out.logprobs, token_text) if token_text and out.logprobs else None
        if logprobs and not deltas:
            deltas = [{"content": ""}]
        for k, delta in enumerate(deltas):
            yield chunk(out.index, delta, logprobs=logprobs if k == 0 else None)
        if out.finished:
            yield chunk(out.index, {}, _finish(out.finish_reason, parser.saw_tool_call))
    if include_usage:
        yield sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [], "usage": openai_usage(
                       prompt_tokens, sum(completion), cached, count_text_tokens(tokenizer, [p.reasoning for p in parsers]))})
    yield sse("[DONE]")
