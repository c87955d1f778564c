"""What a benchmark talks to: an OpenAI-compatible server over HTTP, or the engine in-process.

Both expose ``await target.chat(messages, max_tokens)`` returning a :class:`StreamRecord`
with the arrival time of every streamed chunk, so latency figures are computed the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..options import DEFAULTS


@dataclass
class StreamRecord:
    """One streamed request, timed on the client side (time.perf_counter seconds)."""

    start: float
    end: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, tokens it carries or 0 if unknown)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # in-process only
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def timed(self) -> bool:
        """Streamed at least one chunk of text (a model that emits only invisible tokens cannot be timed)."""
        return self.error is None and bool(self.chunks)

    @property
    def ttft(self) -> float:
        return self.chunks[0][0] - self.start if self.chunks else math.nan

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (None for a single token)."""
        if self.completion_tokens < 2:
            return None
        return (self.chunks[-1][0] - self.chunks[0][0]) / (self.completion_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive chunks (one token each unless a chunk merged several)."""
        times = [t for t, _ in self.chunks]
        return [b - a for a, b in zip(times, times[1:])]


class HttpTarget:
    """Streaming chat completions against ``url`` (the OpenAI wire format), read with a plain SSE reader.

    The client is aiohttp (its HTTP parser is C) and chunks are decoded with msgspec: on a machine with
    few cores the load generator shares them with the server, and httpx cost ~2.5x its CPU per token.
    """

    def __init__(self, url: str, model: str = "default_model", api_key: str | None = None,
                 ignore_eos: bool = True, timeout: float = 600.0):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.name = self.url
        self.model = model
        self.ignore_eos = ignore_eos
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._session = None

    async def __aenter__(self) -> "HttpTarget":
        import aiohttp

        self._session = aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=self._timeout),
                                              connector=aiohttp.TCPConnector(limit=512))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def chat(self, messages: list[dict], max_tokens: int, temperature: float = 0.0) -> StreamRecord:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature, "stream": True,
                                "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        rec = StreamRecord(start=time.perf_counter())
        text: list[str] = []
        try:
            async with self._session.post(f"{self.url}/v1/chat/completions", json=body) as resp:
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}: {(await resp.read()).decode(errors='replace')[:300]}"
                    return rec
                pending = b""
                async for data in resp.content.iter_any():
                    *lines, pending = (pending + data).split(b"\n")
                    if not _read_sse_lines(lines, rec, text):
                        break
        except Exception as exc:  # a failed request is recorded, never fatal to the run
            rec.error = f"{type(exc).__name__}: {exc}"
        rec.end = time.perf_counter()
        rec.text = "".join(text)
        if not rec.completion_tokens:  # no usage reported: one token per content chunk
            rec.completion_tokens = len(rec.chunks)
        return rec


_decode_chunk = msgspec.json.Decoder().decode


def _read_sse_lines(lines: list[bytes], rec: StreamRecord, text: list[str]) -> bool:
    """Apply SSE ``data:`` lines of chat chunks to ``rec``; False once the stream's ``[DONE]`` is read."""
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return False
        now = time.perf_counter()
        chunk = _decode_chunk(data)
        choices = chunk.get("choices") or []
        delta = choices[0].get("delta") or {} if choices else {}
        piece = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        if piece:
            rec.chunks.append((now, 0))
            text.append(piece)
        if chunk.get("usage"):
            rec.completion_tokens = chunk["usage"].get("completion_tokens", 0)
            rec.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
    return True


class EngineTarget:
    """The engine in this process (no HTTP): chat messages rendered with the model's chat template."""

    def __init__(self, model: str, max_num_seqs: int = DEFAULTS.max_num_seqs,
                 max_num_batched_tokens: int = DEFAULTS.max_num_batched_tokens,
                 prefix_cache: bool = True, ignore_eos: bool = True, **engine_kwargs):
        self.model_path = model
        self.name = f"engine:{model}"
        self.ignore_eos = ignore_eos
        # the engine's own machinery unless speculation is asked for (bench rows --speculative runs both)
        self._config_kwargs = dict(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                   prefix_cache=prefix_cache, **{"speculative": "off", **engine_kwargs})
        self._ids = itertools.count()
        self.engine = None
        self.tokenizer = None

    async def __aenter__(self) -> "EngineTarget":
        from ..engine.async_engine import AsyncEngine
        from ..engine.config import EngineConfig

        self.engine = AsyncEngine(load_for_bench(self.model_path), EngineConfig(**self._config_kwargs))
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.engine.start, loop)
        self.tokenizer = self.engine.loaded.tokenizer
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.engine.shutdown)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    async def chat(self, messages: list[dict], max_tokens: int, temperature: float = 0.0) -> StreamRecord:
        return await self.generate(self.encode_chat(messages), max_tokens, temperature)

    async def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float = 0.0,
                       adapter: str | None = None) -> StreamRecord:
        from ..engine.request import GenerationRequest, SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, ignore_eos=self.ignore_eos,
                                adapter=adapter)
        request = GenerationRequest(f"bench-{next(self._ids)}", prompt_ids, params)
        rec = StreamRecord(start=time.perf_counter(), prompt_tokens=len(prompt_ids))
        text = []
        async for out in self.engine.generate(request):
            if out.token_ids:
                rec.chunks.append((time.perf_counter(), len(out.token_ids)))
                rec.token_ids.extend(out.token_ids)
            text.append(out.text)
            if out.error:
                rec.error = out.error
        rec.end = time.perf_counter()
        rec.text = "".join(text)
        rec.completion_tokens = len(rec.token_ids)
        return rec


def load_for_bench(model: str):
    """A loader for the engine thread: the compute dtype the server would pick on this backend."""

    def load():
        from .. import BLAS_STATUS
        from ..models.loader import load_model
        from ..platform import detect_backend

        backend = detect_backend(BLAS_STATUS, "auto")
        loaded = load_model(model, compute_dtype=backend.compute_dtype)
        loaded.backend = backend
        return loaded

    return load
