"""OpenAI adapter: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine.request import FinishReason, GenerationOutput
from .errors import APIError, error_body
from .protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, Usage, new_id
from .serving import ServingState, finish_reason_text

router = APIRouter()

DISCONNECT_POLL_S = 0.25


def _state(raw: Request) -> ServingState:
    return raw.app.state.serving


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def _usage(prompt: int, completion: int) -> dict:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion).model_dump()


def _raise_if_failed(out: GenerationOutput) -> None:
    if out.finish_reason is FinishReason.ERROR:
        raise APIError(500, f"generation failed: {out.error}", code="generation_error")


async def collect(stream: AsyncIterator[GenerationOutput], raw: Request) -> tuple[str, GenerationOutput]:
    """Gather a whole generation; stops it (freeing its slot) if the client disconnects."""

    async def consume() -> tuple[str, GenerationOutput]:
        parts, last = [], None
        async for out in stream:
            parts.append(out.text)
            last = out
        return "".join(parts), last

    task = asyncio.ensure_future(consume())
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            text, last = task.result()
            _raise_if_failed(last)
            return text, last
        if await raw.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stream.aclose()
            raise APIError(499, "client disconnected")


@router.get("/v1/models")
async def list_models(raw: Request) -> ModelList:
    state = _state(raw)
    names = (state.model_name, *state.aliases)
    return ModelList(
        data=[ModelCard(id=n, root=state.model_name, max_model_len=state.max_model_len) for n in names]
    )


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, raw: Request):
    state = _state(raw)
    state.warn_unknown_fields(req, "/v1/chat/completions")
    state.reject_unsupported(req)
    prompt_ids = await state.tokenize(state.render_chat, req)
    params = state.sampling_params(req, len(prompt_ids), req.max_completion_tokens or req.max_tokens)
    request_id = new_id("chatcmpl")
    stream = state.generate(request_id, prompt_ids, params)
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _chat_stream(stream, request_id, created, state.model_name, include_usage),
            media_type="text/event-stream",
        )
    text, last = await collect(stream, raw)
    return JSONResponse(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": state.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason_text(last.finish_reason),
                }
            ],
            "usage": _usage(last.prompt_tokens, last.completion_tokens),
        }
    )


async def _chat_stream(
    stream: AsyncIterator[GenerationOutput], request_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = usage
        return sse(body)

    yield chunk({"role": "assistant", "content": ""})
    last = None
    async for out in stream:
        last = out
        if out.finish_reason is FinishReason.ERROR:
            yield sse(error_body(500, f"generation failed: {out.error}", code="generation_error"))
            break
        if out.text:
            yield chunk({"content": out.text})
        if out.finished:
            yield chunk({}, finish_reason_text(out.finish_reason))
    if include_usage and last is not None:
        usage = _usage(last.prompt_tokens, last.completion_tokens)
        yield sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [], "usage": usage})
    yield sse("[DONE]")


# -- legacy completions ---------------------------------------------------------


def _completion_prompts(state: ServingState, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        ids = list(p) if isinstance(p, list) else state.tokenizer.encode(p)
        if not ids:
            raise APIError(400, "prompt must not be empty", param="prompt")
        vocab = len(state.tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        out.append(ids)
    return out


@router.post("/v1/completions")
async def completions(req: CompletionRequest, raw: Request):
    state = _state(raw)
    state.warn_unknown_fields(req, "/v1/completions")
    state.reject_unsupported(req)
    prompts = await state.tokenize(_completion_prompts, state, req.prompt)
    params = [state.sampling_params(req, len(p), req.max_tokens) for p in prompts]
    request_id = new_id("cmpl")
    created = int(time.time())
    streams = [state.generate(f"{request_id}-{i}", p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _completion_stream(streams, request_id, created, state.model_name, include_usage),
            media_type="text/event-stream",
        )
    results = await asyncio.gather(*(collect(s, raw) for s in streams))
    choices = [
        {"index": i, "text": text, "logprobs": None, "finish_reason": finish_reason_text(last.finish_reason)}
        for i, (text, last) in enumerate(results)
    ]
    prompt_tokens = sum(last.prompt_tokens for _, last in results)
    completion_tokens = sum(last.completion_tokens for _, last in results)
    return JSONResponse(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": state.model_name,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }
    )


async def _completion_stream(
    streams: list[AsyncIterator[GenerationOutput]], request_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    queue: asyncio.Queue[tuple[int, GenerationOutput | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationOutput]) -> None:
        try:
            async for out in stream:
                await queue.put((index, out))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    totals: dict[int, GenerationOutput] = {}
    open_streams = len(tasks)
    try:
        while open_streams:
            index, out = await queue.get()
            if out is None:
                open_streams -= 1
                continue
            totals[index] = out
            if out.finish_reason is FinishReason.ERROR:
                yield sse(error_body(500, f"generation failed: {out.error}", code="generation_error"))
                continue
            if out.text or out.finished:
                body = {
                    "id": request_id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": index, "text": out.text, "logprobs": None,
                                 "finish_reason": finish_reason_text(out.finish_reason)}],
                }
                if include_usage:
                    body["usage"] = None
                yield sse(body)
        if include_usage:
            p = sum(o.prompt_tokens for o in totals.values())
            c = sum(o.completion_tokens for o in totals.values())
            yield sse({"id": request_id, "object": "text_completion", "created": created, "model": model,
                       "choices": [], "usage": _usage(p, c)})
        yield sse("[DONE]")
    finally:
        for t in tasks:
            t.cancel()
