"""Embedding models through mlx-embeddings, with concurrent requests coalesced into shared forwards.

:class:`EmbeddingService` owns one :class:`~vllm_mlx.models.model_worker.ModelWorker`.  Requests
queue their inputs; whenever the worker is free, everything queued so far (plus whatever arrives
within a couple of milliseconds) is tokenized, sorted by length, cut into forwards of at most
``max_batch_tokens`` padded tokens and embedded together, and every request gets its rows back in
its own order.  Pooling and normalization are the model's own (``text_embeds`` of mlx-embeddings).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .context import declared_context_length
from .model_worker import ModelWorker
from .vocab import max_chars_per_token

logger = logging.getLogger(__name__)

COALESCE_WINDOW_S = 0.002  # how long a free worker waits for requests arriving together


class EmbeddingInputError(ValueError):
    """A request's input cannot be embedded (too long, bad token id, ...); the API answers 400."""

    def __init__(self, message: str, param: str = "input"):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class EmbeddingModelSpec:
    """What the server knows from ``config.json`` before the weights are loaded."""

    hidden_size: int | None
    max_tokens: int
    matryoshka_dimensions: tuple[int, ...] | None  # None: no Matryoshka training declared
    any_matryoshka_dimension: bool  # ``is_matryoshka: true`` without a list
    vocab_size: int | None
    is_classifier: bool

    @classmethod
    def from_config(cls, config: dict) -> "EmbeddingModelSpec":
        dims = config.get("matryoshka_dimensions")
        archs = config.get("architectures") or []
        max_pos = declared_context_length(config) or 512  # BERT's window when the config declares none
        if config.get("model_type") in ("xlm-roberta", "xlm_roberta", "roberta", "camembert"):
            max_pos -= (config.get("pad_token_id") or 1) + 1  # RoBERTa positions start after the pad id
        return cls(
            hidden_size=config.get("hidden_size"),
            max_tokens=int(max_pos),
            matryoshka_dimensions=tuple(sorted(int(d) for d in dims)) if dims else None,
            any_matryoshka_dimension=bool(config.get("is_matryoshka")) and not dims,
            vocab_size=config.get("vocab_size"),
            is_classifier=any(a.endswith("ForSequenceClassification") for a in archs),
        )

    def check_dimensions(self, dimensions: int | None, model_name: str) -> None:
        """Raise :class:`EmbeddingInputError` unless ``dimensions`` can be served."""
        if dimensions is None or dimensions == self.hidden_size:
            return
        if self.matryoshka_dimensions is not None:
            if dimensions in self.matryoshka_dimensions:
                return
            raise EmbeddingInputError(
                f"model {model_name!r} supports dimensions {list(self.matryoshka_dimensions)}, "
                f"not {dimensions}", param="dimensions")
        if self.any_matryoshka_dimension and self.hidden_size and 1 <= dimensions <= self.hidden_size:
            return
        raise EmbeddingInputError(
            f"model {model_name!r} does not support 'dimensions' other than its native "
            f"{self.hidden_size} (it declares no Matryoshka dimensions)", param="dimensions")


def read_spec(model_path: Path) -> EmbeddingModelSpec:
    return EmbeddingModelSpec.from_config(json.loads((model_path / "config.json").read_text()))


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dimensions`` values and renormalize."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return (cut / norms).astype(np.float32)


class LoadedEmbeddingModel:
    """An mlx-embeddings model and its tokenizer; used on the worker thread only."""

    def __init__(self, model: Any, tokenizer: Any, spec: EmbeddingModelSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        limit = getattr(tokenizer, "model_max_length", None)
        self.max_tokens = min(spec.max_tokens, limit) if isinstance(limit, int) and limit > 0 else spec.max_tokens
        # longer texts cannot fit max_tokens: refused before tokenizing (see api/prompt_guard.py)
        self.max_chars = self.max_tokens * max_chars_per_token(tokenizer)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                raise EmbeddingInputError(
                    f"input[{i}] has {len(text)} characters, more than fit this model's {self.max_tokens} tokens "
                    f"({self.max_chars} characters at most); it was refused before tokenizing")
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def check_sequences(self, sequences: list[list[int]]) -> None:
        vocab = self.spec.vocab_size
        for i, seq in enumerate(sequences):
            if not seq:
                raise EmbeddingInputError(f"input[{i}] is empty")
            if len(seq) > self.max_tokens:
                raise EmbeddingInputError(
                    f"input[{i}] has {len(seq)} tokens; this model takes at most {self.max_tokens}")
            if vocab is not None and any(not 0 <= t < vocab for t in seq):
                raise EmbeddingInputError(f"input[{i}] holds a token id outside 0..{vocab - 1}")

    def embed(self, sequences: list[list[int]]) -> np.ndarray:
        """One padded forward; returns (len(sequences), dim) float32 rows."""
        import mlx.core as mx

        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(sequences), width), dtype=np.int32)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        out = self.model(mx.array(ids), attention_mask=mx.array(mask))
        vectors = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        vectors = vectors.astype(mx.float32)
        mx.eval(vectors)
        return np.array(vectors)


def load_embedding_model(source: str, spec: EmbeddingModelSpec, requested_dtype: str) -> LoadedEmbeddingModel:
    """mlx-embeddings' normal loader; runs on the worker thread.  ``requested_dtype`` is ``--dtype``:
    ``auto`` computes unquantized weights in float32 on the CPU backend (the fast BLAS path)."""
    import mlx.core as mx
    from mlx_embeddings.utils import load

    from .. import BLAS_STATUS
    from ..platform import detect_backend
    from .loader import cast_floating_weights

    compute_dtype = detect_backend(BLAS_STATUS, requested_dtype).compute_dtype
    model, tokenizer = load(source)
    if compute_dtype not in ("model", "auto"):
        cast_floating_weights(model, getattr(mx, compute_dtype))
        mx.eval(model.parameters())
    return LoadedEmbeddingModel(model, tokenizer, spec)


@dataclass
class EmbeddingJob:
    """One request's inputs: strings (tokenized on the worker) or token-id lists."""

    texts: list[str] | None
    token_ids: list[list[int]] | None
    future: asyncio.Future = field(repr=False, default=None)  # type: ignore[assignment]


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (inputs, dim) float32, in input order
    token_counts: list[int]


@dataclass
class BatchingStats:
    requests: int = 0
    inputs: int = 0
    tokens: int = 0
    flushes: int = 0  # worker calls; each took every request queued at the time
    forwards: int = 0
    most_requests_in_one_forward: int = 0


def run_embedding_jobs(model: LoadedEmbeddingModel, jobs: list[EmbeddingJob], max_batch_tokens: int,
                       stats: BatchingStats) -> list[EmbeddingResult | Exception]:
    """Tokenize and check every job, then embed all of their rows in length-sorted padded forwards.

    Runs on the worker thread.  A job whose input is bad gets its own exception; the others run.
    """
    results: list[EmbeddingResult | Exception] = []
    rows: list[tuple[int, int, list[int]]] = []  # (job, row within job, tokens)
    for j, job in enumerate(jobs):
        try:
            seqs = model.tokenize(job.texts) if job.texts is not None else job.token_ids
            model.check_sequences(seqs)
        except EmbeddingInputError as exc:
            results.append(exc)
            continue
        except Exception as exc:  # tokenizer failures are the input's fault
            results.append(EmbeddingInputError(f"could not tokenize the input: {exc}"))
            continue
        results.append(EmbeddingResult(vectors=np.empty((0, 0), np.float32), token_counts=[len(s) for s in seqs]))
        rows.extend((j, r, s) for r, s in enumerate(seqs))
    rows.sort(key=lambda row: len(row[2]))
    out: dict[tuple[int, int], np.ndarray] = {}
    start = 0
    while start < len(rows):
        end = start + 1  # rows are sorted, so the padded width of rows[start:end] is len(rows[end-1])
        while end < len(rows) and (end + 1 - start) * len(rows[end][2]) <= max_batch_tokens:
            end += 1
        chunk = rows[start:end]
        vectors = model.embed([s for _, _, s in chunk])
        for (j, r, _), vec in zip(chunk, vectors):
            out[(j, r)] = vec
        stats.forwards += 1
        stats.most_requests_in_one_forward = max(stats.most_requests_in_one_forward, len({j for j, _, _ in chunk}))
        start = end
    for j, result in enumerate(results):
        if isinstance(result, EmbeddingResult):
            result.vectors = np.stack([out[(j, r)] for r in range(len(result.token_counts))])
            stats.tokens += sum(result.token_counts)
            stats.inputs += len(result.token_counts)
    stats.requests += len(jobs)
    stats.flushes += 1
    return results


class EmbeddingService:
    """The served embedding model: lazy loading, one worker thread, coalesced batches."""

    kind = "embedding"

    def __init__(self, name: str, source: str, model_path: Path, *, requested_dtype: str = "auto",
                 max_batch_tokens: int = 8192):
        self.name = name
        self.source = source
        self.spec = read_spec(model_path)
        self.max_batch_tokens = max_batch_tokens
        self.worker = ModelWorker(self.kind, name, lambda: load_embedding_model(source, self.spec, requested_dtype))
        self._pending: list[EmbeddingJob] = []
        self._drainer: asyncio.Task | None = None
        self._stats = BatchingStats()

    async def embed(self, texts: list[str] | None = None, token_ids: list[list[int]] | None = None) -> EmbeddingResult:
        """Embed one request's inputs (strings or token-id lists) together with concurrent requests."""
        job = EmbeddingJob(texts=texts, token_ids=token_ids, future=asyncio.get_running_loop().create_future())
        self._pending.append(job)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await job.future  # a cancelled request's future is cancelled; its rows are dropped

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(COALESCE_WINDOW_S)
            jobs, self._pending = self._pending, []
            try:
                results = await self.worker.run(run_embedding_jobs, jobs, self.max_batch_tokens, self._stats)
            except Exception as exc:
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results):
                if job.future.done():
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def stats(self) -> dict:
        return {"batching": vars(self._stats).copy(), **vars(self.worker.stats())}
