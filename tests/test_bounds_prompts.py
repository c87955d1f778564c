"""Huge prompts are refused by size before any tokenizer work, in every API, and tokenizer work runs on
lanes a flood of large prompts cannot monopolize (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import pytest

from vllm_mlx.api.errors import APIError
from vllm_mlx.serving.prompt_guard import LARGE_CHARS, LARGE_WAITING, PromptGuard, text_size
from vllm_mlx.models.vocab import max_chars_per_token

pytestmark = pytest.mark.reliability

HUGE = 10 * 2**20  # characters


@pytest.fixture(scope="module")
def server(start_server, tiny_qwen3, models_dir):
    from vllm_mlx_testing.embedding_models import build_tiny_bert

    bert = build_tiny_bert(models_dir / "bounds-bert")
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--embedding-model", bert,
                        "--preload-extra-models")


def _huge_requests(text: str) -> list[tuple[str, dict]]:
    user = [{"role": "user", "content": text}]
    return [
        ("/v1/chat/completions", {"messages": user, "max_tokens": 2}),
        ("/v1/completions", {"prompt": text, "max_tokens": 2}),
        ("/v1/completions", {"prompt": ["short", text], "max_tokens": 2}),
        ("/v1/responses", {"input": text, "max_output_tokens": 2}),
        ("/v1/messages", {"messages": user, "max_tokens": 2}),
        ("/v1/messages/count_tokens", {"messages": user}),
        ("/v1/embeddings", {"input": text}),
    ]


def test_huge_prompts_are_refused_before_tokenizing_in_every_api(server):
    text = "hello world " * (HUGE // 12)
    for path, body in _huge_requests(text):
        started = time.monotonic()
        resp = httpx.post(f"{server.base_url}{path}", json=body, timeout=120)
        took = time.monotonic() - started
        assert resp.status_code == 400, (path, resp.status_code, resp.text[:200])
        error = resp.json()
        message = error["error"]["message"]
        if path.startswith("/v1/messages"):  # what Claude Code compacts on (tests/test_agent_overflow.py)
            assert error["type"] == "error" and message.startswith("prompt is too long: "), (path, message)
        else:
            assert "refused before tokenizing" in message, (path, message)
            if path != "/v1/embeddings":
                assert error["error"]["code"] == "context_length_exceeded"
        assert took < 5, (path, took)  # tokenizing it would take ~8 s here (a minute on a loaded machine)


def test_a_flood_of_huge_prompts_does_not_delay_a_short_request(server):
    text = "hello world " * (HUGE // 12)

    def huge(_):
        started = time.monotonic()
        resp = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=300,
                          json={"messages": [{"role": "user", "content": text}], "max_tokens": 2})
        return resp.status_code, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        flood = [pool.submit(huge, i) for i in range(6)]
        time.sleep(0.3)
        started = time.monotonic()
        short = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=300,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        short_took = time.monotonic() - started
        results = [f.result() for f in flood]
    assert short.status_code == 200 and short_took < 5, short_took
    assert all(status == 400 and took < 15 for status, took in results), results


def test_the_bound_is_sound_for_the_tokenizer(tiny_qwen3):
    """No text of more than budget x L characters tokenizes to budget tokens or fewer: L is the longest
    vocabulary entry, so the text the longest tokens spell is the densest there is."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    per_token = max_chars_per_token(tok)
    longest = max(tok.get_vocab(), key=len)
    dense = tok.convert_tokens_to_string([longest]) * 50
    assert len(tok.encode(dense, add_special_tokens=False)) >= len(dense) / per_token
    guard = PromptGuard(tok, 100)
    guard.check("x" * (100 * per_token))
    with pytest.raises(APIError) as err:
        guard.check("x" * (100 * per_token + 1), "prompt")
    assert err.value.status == 400 and err.value.param == "prompt" and "--max-model-len" in err.value.message


def test_large_prompts_have_their_own_bounded_lane(tiny_qwen3):
    """Unit test of the lanes: large jobs queue behind each other (at most LARGE_WAITING, then 503),
    while a small job starts at once."""
    from transformers import AutoTokenizer

    guard = PromptGuard(AutoTokenizer.from_pretrained(tiny_qwen3), 4096)
    big = "x" * (LARGE_CHARS + 1)
    assert text_size(("y" * 10,), LARGE_CHARS) <= LARGE_CHARS < text_size((big,), LARGE_CHARS)

    def slow(text: str) -> float:
        time.sleep(0.4)
        return time.monotonic()

    async def scenario():
        large = [asyncio.create_task(guard.run(slow, big)) for _ in range(LARGE_WAITING)]
        await asyncio.sleep(0.05)
        with pytest.raises(APIError) as err:
            await guard.run(slow, big)
        started = time.monotonic()
        small_done = await guard.run(lambda s: time.monotonic(), "hi")
        done = await asyncio.gather(*large)
        return err.value, small_done - started, max(done) - started

    refused, small_wait, large_span = asyncio.run(scenario())
    assert refused.status == 503 and refused.code == "tokenizer_busy" and refused.headers["Retry-After"]
    assert small_wait < 0.2  # did not wait behind the large lane
    assert large_span > 0.4 * (LARGE_WAITING - 1)  # the large lane ran them one at a time
    assert guard.large_jobs == 0
