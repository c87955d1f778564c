"""/v1/embeddings and /v1/rerank end to end: `vllm-mlx serve --embedding-model` as a real process with a
tiny random BERT (built here, loaded through mlx-embeddings' normal loader), driven with the openai SDK."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np

from vllm_mlx.engine.numerics import vector_tolerance  # by backend and dtype
import openai
import pytest

pytest.importorskip("mlx_embeddings", reason="the 'embeddings' extra is not installed (pip install 'vllm-mlx[embeddings]')")

TEXTS = [
    "The cat sat on the mat.",
    "A dog runs in the park today.",
    "Write a function that parses the request.",
    "the weather is sunny and warm",
]


@pytest.fixture(scope="module")
def tiny_bert(models_dir):
    from vllm_mlx_testing.embedding_models import build_tiny_bert

    return build_tiny_bert(models_dir / "tiny-bert", matryoshka_dimensions=[16, 32])


@pytest.fixture(scope="module")
def embed_server(start_server, tiny_qwen3, tiny_bert):
    server = start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--embedding-model", tiny_bert)
    server.models_at_start = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    return server


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_bert):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def embed(server, inputs, **kw) -> np.ndarray:
    resp = client(server).embeddings.create(model="tiny-bert", input=inputs, **kw)
    assert [d.index for d in resp.data] == list(range(len(resp.data)))
    return np.array([decode(d.embedding) for d in resp.data], dtype=np.float64)


def decode(embedding) -> np.ndarray:
    """An embedding as sent: a list of floats, or base64 little-endian float32 (explicit base64 is
    left to the caller by the SDK, which decodes only the base64 it asked for itself)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding)


def test_models_list_the_embedding_model_lazily(embed_server):
    at_start = {m["id"]: m for m in embed_server.models_at_start}
    assert at_start["tiny-qwen3"]["kind"] == "chat"
    assert at_start["tiny-bert"]["kind"] == "embedding" and at_start["tiny-bert"]["loaded"] is False
    embed(embed_server, "load me")
    now = {m.id: m.model_extra for m in client(embed_server).models.list().data}
    assert now["tiny-bert"] == {**now["tiny-bert"], "kind": "embedding", "loaded": True}


def test_float_and_base64_are_identical(embed_server):
    as_float = embed(embed_server, TEXTS, encoding_format="float")
    as_base64 = embed(embed_server, TEXTS, encoding_format="base64")  # decoded here
    as_default = embed(embed_server, TEXTS)  # the SDK asks for base64 itself and decodes it
    assert as_float.shape == (len(TEXTS), 32)
    assert np.array_equal(as_float, as_base64) and np.array_equal(as_float, as_default)
    raw = httpx.post(f"{embed_server.base_url}/v1/embeddings",
                     json={"model": "tiny-bert", "input": TEXTS[0], "encoding_format": "base64"}).json()
    assert isinstance(raw["data"][0]["embedding"], str)


def test_batch_order_and_identical_inputs(embed_server):
    batch = embed(embed_server, TEXTS + [TEXTS[0]])
    singles = np.stack([embed(embed_server, t)[0] for t in TEXTS])
    np.testing.assert_allclose(batch[: len(TEXTS)], singles, atol=2 * vector_tolerance())  # padded batch == one by one
    norms = np.linalg.norm(batch, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=vector_tolerance())
    cosine = batch @ batch.T
    assert cosine[0, len(TEXTS)] == pytest.approx(1.0, abs=1e-6)  # the same text twice
    assert cosine[0, 1] < 0.99 and cosine[1, 2] < 0.99  # different texts differ


def test_usage_counts_every_token_the_model_read(embed_server, bert_tokenizer):
    resp = client(embed_server).embeddings.create(model="tiny-bert", input=TEXTS)
    expected = sum(len(bert_tokenizer.encode(t).ids) for t in TEXTS)  # [CLS] ... [SEP] included
    assert resp.usage.prompt_tokens == expected == resp.usage.total_tokens
    assert resp.model == "tiny-bert" and resp.object == "list"


def test_token_id_inputs_match_text(embed_server, bert_tokenizer):
    ids = [bert_tokenizer.encode(t).ids for t in TEXTS[:2]]
    from_ids = embed(embed_server, ids)
    one_list = embed(embed_server, ids[0])  # a single token-id list
    np.testing.assert_allclose(from_ids, embed(embed_server, TEXTS[:2]), atol=vector_tolerance() / 10)
    np.testing.assert_allclose(one_list[0], from_ids[0], atol=vector_tolerance() / 10)
    resp = client(embed_server).embeddings.create(model="tiny-bert", input=ids)
    assert resp.usage.prompt_tokens == len(ids[0]) + len(ids[1])


def test_matryoshka_dimensions(embed_server):
    full = embed(embed_server, TEXTS[:2])
    short = embed(embed_server, TEXTS[:2], dimensions=16)
    assert short.shape == (2, 16)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=vector_tolerance() / 10)
    assert embed(embed_server, TEXTS[0], dimensions=32).shape == (1, 32)  # native size is always fine
    with pytest.raises(openai.BadRequestError) as err:
        embed(embed_server, TEXTS[0], dimensions=8)
    assert err.value.body["param"] == "dimensions" and "16, 32" in err.value.body["message"]


def test_bad_inputs_are_400_and_other_models_404(embed_server):
    c = client(embed_server)
    cases = [
        dict(input=""),  # empty string
        dict(input=[]),  # nothing to embed
        dict(input=[[5, 10**6]]),  # token id outside the vocabulary
        dict(input="word " * 200),  # longer than the 128 positions
    ]
    for kw in cases:
        with pytest.raises(openai.BadRequestError) as err:
            c.embeddings.create(model="tiny-bert", **kw)
        assert err.value.body["param"] == "input", kw
    with pytest.raises(openai.NotFoundError) as err:
        c.embeddings.create(model="tiny-qwen3", input="hello")  # the chat model does not embed
    assert err.value.body["code"] == "model_not_found"
    assert "tiny-bert" in err.value.body["message"]


def test_concurrent_requests_share_forwards(embed_server):
    before = httpx.get(f"{embed_server.base_url}/health").json()["extra_models"]["embedding"]["batching"]
    texts = [f"{TEXTS[i % len(TEXTS)]} number {i}" for i in range(24)]

    async def run():
        ac = openai.AsyncOpenAI(base_url=f"{embed_server.base_url}/v1", api_key="unused", max_retries=0)
        resps = await asyncio.gather(*(ac.embeddings.create(model="tiny-bert", input=t) for t in texts))
        await ac.close()
        return resps

    together = np.array([r.data[0].embedding for r in asyncio.run(run())])
    after = httpx.get(f"{embed_server.base_url}/health").json()["extra_models"]["embedding"]["batching"]
    requests, flushes = after["requests"] - before["requests"], after["flushes"] - before["flushes"]
    assert requests == len(texts)
    assert flushes < requests and after["most_requests_in_one_forward"] >= 2, after
    alone = embed(embed_server, texts)  # every request got its own rows back
    np.testing.assert_allclose(together, alone, atol=2 * vector_tolerance())


def test_rerank_scores_by_cosine(embed_server):
    docs = [TEXTS[1], TEXTS[0], {"text": TEXTS[2]}]
    body = httpx.post(f"{embed_server.base_url}/v1/rerank",
                      json={"model": "tiny-bert", "query": TEXTS[0], "documents": docs, "top_n": 2}).json()
    assert [r["index"] for r in body["results"]][0] == 1  # the document equal to the query
    assert body["results"][0]["relevance_score"] == pytest.approx(1.0, abs=1e-5)
    assert len(body["results"]) == 2 and body["results"][0]["document"] == {"text": TEXTS[0]}
    assert body["results"][0]["relevance_score"] >= body["results"][1]["relevance_score"]
    assert body["usage"]["total_tokens"] > 0
    bare = httpx.post(f"{embed_server.base_url}/rerank", json={"query": "q", "documents": ["a", "b"],
                                                                 "return_documents": False}).json()
    assert all("document" not in r for r in bare["results"]) and len(bare["results"]) == 2


def test_dimensions_policy_of_models_without_matryoshka():
    from vllm_mlx.models.embedding_worker import EmbeddingInputError, EmbeddingModelSpec

    plain = EmbeddingModelSpec.from_config({"hidden_size": 384, "max_position_embeddings": 512})
    plain.check_dimensions(None, "m")
    plain.check_dimensions(384, "m")  # the native size is a no-op
    with pytest.raises(EmbeddingInputError, match="declares no Matryoshka"):
        plain.check_dimensions(128, "m")
    any_size = EmbeddingModelSpec.from_config({"hidden_size": 384, "is_matryoshka": True})
    any_size.check_dimensions(7, "m")
    with pytest.raises(EmbeddingInputError):
        any_size.check_dimensions(385, "m")
    roberta = EmbeddingModelSpec.from_config({"model_type": "xlm-roberta", "max_position_embeddings": 514,
                                              "pad_token_id": 1})
    assert roberta.max_tokens == 512  # positions start after the pad id
