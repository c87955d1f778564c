"""OpenAI adapter: /v1/completions, /v1/models, prefix-cache administration, and the shared helpers
(usage in the OpenAI shape). Chat completions live in chat_routes.py."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine.backlog import OutputBacklog, delta_bytes
from ..engine.request import FinishReason, GenerationOutput
from .errors import APIError, error_body, generation_failure
from .streaming import Choice, collect, request_id_headers, sse
from .extra_model_access import extra_model_cards
from .logprobs import TextOffsets, TokenText, completion_logprobs
from ..serving.requests import new_id
from .protocol import CompletionRequest, ModelCard, ModelList, Usage
from .model_registry import serving_for
from ..serving.state import ServingState, finish_reason_text

logger = logging.getLogger(__name__)

router = APIRouter()

def openai_usage(prompt: int, completion: int, cached: int = 0, reasoning: int | None = None) -> dict:
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion).model_dump()
    usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:  # chat: the reasoning text re-tokenized (at most the completion)
        usage["completion_tokens_details"] = {"reasoning_tokens": min(reasoning, completion)}
    return usage


def choices_usage(choices: list[Choice], reasoning: int | None = None) -> dict:
    first = choices[0].last
    return openai_usage(first.prompt_tokens, sum(c.last.completion_tokens for c in choices), first.cached_tokens,
                        reasoning)


def count_text_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of texts the model wrote (reasoning), re-tokenized."""
    return sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts if t)


@router.get("/v1/models")
async def list_models(raw: Request) -> ModelList:
    """Every served name (aliases included), loaded or not, then the extra models."""
    cards = raw.app.state.model_registry.model_cards() + extra_model_cards(raw)
    return ModelList(data=[ModelCard(**card) for card in cards])


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
        if isinstance(p, str) and state.prompt_guard is not None:
            state.prompt_guard.check(p, "prompt")
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
    state = await serving_for(raw, req.model)
    state.admit(req, "/v1/completions")
    prompts = await state.tokenize(_completion_prompts, state, req.prompt)
    wants_logprobs = req.logprobs is not None
    params = [state.sampling_params(req, len(p), req.max_tokens, logprobs=wants_logprobs,
                                    top_logprobs=req.logprobs or 0) for p in prompts]
    spec = state.structured_spec(req)
    constraint = await state.compile_constraint(*reversed(spec)) if spec else None
    request_id = new_id("cmpl")
    created = int(time.time())
    token_text = TokenText(state.tokenizer) if wants_logprobs else None
    await state.wait_for_memory(*((len(p), sp) for p, sp in zip(prompts, params)))
    streams = [state.generate(f"{request_id}-{i}", p, sp, constraint.deep_copy() if constraint else None,
                              group=request_id)
               for i, (p, sp) in enumerate(zip(prompts, params))]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _completion_stream(streams, request_id, created, state.model_name, req.n, include_usage, token_text,
                               OutputBacklog(*state.engine.stream_bounds)),
            media_type="text/event-stream", headers=request_id_headers(request_id),
        )
    results = await asyncio.gather(*(collect(s, raw, req.n) for s in streams))
    choices = [
        {
            "index": p * req.n + i,
            "text": c.text,
            "logprobs": completion_logprobs(c.logprobs, token_text, TextOffsets()) if token_text else None,
            "finish_reason": finish_reason_text(c.last.finish_reason),
        }
        for p, group in enumerate(results)
        for i, c in enumerate(group)
    ]
    prompt_tokens = sum(group[0].last.prompt_tokens for group in results)
    cached_tokens = sum(group[0].last.cached_tokens for group in results)
    completion_tokens = sum(c.last.completion_tokens for group in results for c in group)
    return JSONResponse(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": state.model_name,
            "choices": choices,
            "usage": openai_usage(prompt_tokens, completion_tokens, cached_tokens),
        },
        headers=request_id_headers(request_id),
    )


async def _completion_stream(
    streams: list[AsyncIterator[GenerationOutput]], request_id: str, created: int, model: str, n: int,
    include_usage: bool, token_text: TokenText | None, queue: OutputBacklog,
) -> AsyncIterator[str]:
    """The prompts' streams read as they come, into one backlog bounded for the whole HTTP request:
    past its bound (a client that stopped reading) every prompt's generation is stopped."""

    async def pump(prompt_index: int, stream: AsyncIterator[GenerationOutput]) -> None:
        try:
            async for out in stream:
                if not queue.put((prompt_index, out), delta_bytes(out)):
                    overflowed(prompt_index)
                    await stream.aclose()  # closing a stream aborts its generation
                    return
        finally:
            queue.force_put((prompt_index, None))

    def overflowed(prompt_index: int) -> None:
        logger.warning("request %s stopped: its client is not reading the stream (%s)", request_id, queue.overflow)
        for t in tasks:
            if t is not asyncio.current_task():
                t.cancel()
        queue.force_put((prompt_index, GenerationOutput(request_id, finish_reason=FinishReason.ERROR,
                                                        error=f"the client did not read the stream: {queue.overflow}")))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    prompt_tokens: dict[int, int] = {}
    cached: dict[int, int] = {}
    completion: dict[int, int] = {}
    offsets: dict[int, TextOffsets] = {}
    open_streams = len(tasks)
    try:
        while open_streams:
            prompt_index, out = await queue.get()
            if out is None:
                open_streams -= 1
                continue
            if out.finish_reason is FinishReason.ERROR:
                failure = generation_failure(out)
                yield sse(error_body(failure.status, failure.message, code=failure.code))
                if queue.overflow is not None:
                    break
                continue
            index = prompt_index * n + out.index
            prompt_tokens[prompt_index] = out.prompt_tokens
            cached[prompt_index] = out.cached_tokens
            completion[index] = out.completion_tokens
            logprobs = None
            if token_text and out.logprobs:
                logprobs = completion_logprobs(out.logprobs, token_text, offsets.setdefault(index, TextOffsets()))
            if out.text or out.finished or logprobs:
                body = {
                    "id": request_id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": index, "text": out.text, "logprobs": logprobs,
                                 "finish_reason": finish_reason_text(out.finish_reason)}],
                }
                if include_usage:
                    body["usage"] = None
                yield sse(body)
        if include_usage:
            usage = openai_usage(sum(prompt_tokens.values()), sum(completion.values()), sum(cached.values()))
            yield sse({"id": request_id, "object": "text_completion", "created": created, "model": model,
                       "choices": [], "usage": usage})
        yield sse("[DONE]")
    finally:
        for t in tasks:
            t.cancel()


# -- prefix cache administration ----------------------------------------------------


@router.get("/v1/cache/stats")
async def cache_stats(raw: Request):
    engine_stats = (await serving_for(raw, raw.query_params.get("model"))).engine.stats
    stats = engine_stats.prefix_cache
    body = {"enabled": stats is not None, **(stats or {})}
    if engine_stats.vision_cache is not None:
        body["vision_embeddings"] = engine_stats.vision_cache
    return JSONResponse(body)


@router.post("/v1/cache/clear")
async def cache_clear(raw: Request):
    await clear_cache(raw)
    return JSONResponse({"cleared": True})


@router.delete("/v1/cache")  # the 0.2.x spelling: also says which model and its cache before
async def cache_delete(raw: Request):
    return JSONResponse(await clear_cache(raw))


async def clear_cache(raw: Request) -> dict:
    """Empty the prefix (and vision-embedding) cache of the model named by ``?model=``."""
    state = await serving_for(raw, raw.query_params.get("model"))
    stats = state.engine.stats
    if stats.prefix_cache is None and stats.vision_cache is None:
        raise APIError(400, "the prefix cache is disabled on this server")
    before = dict(stats.prefix_cache or {})
    state.engine.engine.clear_prefix_cache()
    return {"cleared": True, "model": state.model_name, "before": before}
