"""OpenAI ``POST /v1/embeddings`` and the Cohere/Jina-shaped ``POST /v1/rerank`` (as vLLM serves it).

Embeddings: ``input`` is a string, a list of strings, a list of token ids or a list of token-id lists;
``encoding_format`` ``float`` or ``base64`` (little-endian float32, what the openai SDK asks for by
default); ``dimensions`` for Matryoshka models; ``usage`` counts the tokens the model read, special
tokens included.  Rerank scores each document by the cosine similarity of its embedding with the
query's (bi-encoder scoring, as vLLM does for embedding models).
"""

from __future__ import annotations

import base64
import logging
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ..models.embedding_worker import EmbeddingInputError, EmbeddingResult, EmbeddingService, truncate_dimensions
from ..models.extra_models import EMBEDDING_KIND
from ..models.model_worker import ModelLoadError
from .errors import APIError
from .extra_model_access import require_service
from ..serving.requests import new_id
from .protocol import OpenAIRequest

logger = logging.getLogger(__name__)

router = APIRouter()

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingRequest(OpenAIRequest):
    model: str = "default"
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class RerankDocument(OpenAIRequest):
    text: str


class RerankRequest(OpenAIRequest):
    model: str = "default"
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1, max_length=MAX_INPUTS - 1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = True


def _split_input(value: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    """(strings, token-id lists) of an embeddings ``input``; exactly one is not None."""
    if isinstance(value, str):
        value = [value]
    if not value:
        raise APIError(400, "'input' must not be empty", param="input")
    if all(isinstance(v, int) for v in value):
        return None, [list(value)]
    if len(value) > MAX_INPUTS:
        raise APIError(400, f"'input' holds {len(value)} items; at most {MAX_INPUTS} per request", param="input")
    if all(isinstance(v, str) for v in value):
        for i, text in enumerate(value):
            if not text:
                raise APIError(400, f"input[{i}] is an empty string", param="input")
        return list(value), None
    return None, [list(v) for v in value]


def _warn_unknown(req: OpenAIRequest, route: str) -> None:
    if req.model_extra:
        logger.warning("%s: ignoring unknown field(s) %s", route, sorted(req.model_extra))


async def _embed(service: EmbeddingService, texts: list[str] | None, ids: list[list[int]] | None) -> EmbeddingResult:
    try:
        return await service.embed(texts=texts, token_ids=ids)
    except EmbeddingInputError as exc:
        raise APIError(400, str(exc), param=exc.param)
    except ModelLoadError as exc:
        raise APIError(500, str(exc), code="model_load_error")


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


@router.post("/v1/embeddings")
async def create_embeddings(req: EmbeddingRequest, raw: Request):
    service: EmbeddingService = require_service(raw, EMBEDDING_KIND, req.model)
    _warn_unknown(req, "/v1/embeddings")
    try:
        service.spec.check_dimensions(req.dimensions, service.name)
    except EmbeddingInputError as exc:
        raise APIError(400, str(exc), param=exc.param)
    texts, ids = _split_input(req.input)
    result = await _embed(service, texts, ids)
    vectors = result.vectors
    if req.dimensions is not None and req.dimensions > vectors.shape[1]:
        raise APIError(400, f"'dimensions' {req.dimensions} exceeds the model's {vectors.shape[1]}",
                       param="dimensions")
    vectors = truncate_dimensions(vectors, req.dimensions)
    tokens = sum(result.token_counts)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": service.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


@router.post("/v1/rerank")
@router.post("/v2/rerank")
@router.post("/rerank")
async def rerank(req: RerankRequest, raw: Request):
    service: EmbeddingService = require_service(raw, EMBEDDING_KIND, req.model)
    _warn_unknown(req, "/v1/rerank")
    if service.spec.is_classifier:
        raise APIError(400, f"model {service.name!r} is a sequence classifier (cross-encoder); reranking "
                            "serves embedding models only (cosine similarity)", param="model")
    docs = [d if isinstance(d, str) else d.text for d in req.documents]
    for i, text in enumerate(docs):
        if not text:
            raise APIError(400, f"documents[{i}] is empty", param="documents")
    result = await _embed(service, [req.query, *docs], None)
    vectors = result.vectors / np.maximum(np.linalg.norm(result.vectors, axis=1, keepdims=True), 1e-12)
    scores = vectors[1:] @ vectors[0]
    order = sorted(range(len(docs)), key=lambda i: -float(scores[i]))[: req.top_n or len(docs)]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if req.return_documents:
            item["document"] = {"text": docs[i]}
        results.append(item)
    tokens = sum(result.token_counts)
    return JSONResponse({
        "id": new_id("rerank"),
        "model": service.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    })
