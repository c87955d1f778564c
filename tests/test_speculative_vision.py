"""Speculative decoding on vision-language models: image rows (mrope positions offset per row, or
Gemma 3's sliding windows) and text rows speculate in one batch, and every request's greedy text is
mlx-vlm's own; Qwen3.5/3.6 vision models and MTP on a vision model are refused at start, saying why."""

from __future__ import annotations

import re
import threading

import httpx
import openai
import pytest
from test_gemma_vision import IMAGES as GEMMA_IMAGES
from test_gemma_vision import QUESTION as GEMMA_QUESTION
from test_gemma_vision import STORY, reference, user
from vision_helpers import openai_content, reference_greedy

from vllm_mlx_testing.gemma3_vision import build_tiny_gemma3_vision_model
from vllm_mlx_testing.qwen35_vision import build_tiny_qwen35_vision_model
from vllm_mlx_testing.vision_models import build_tiny_vision_model, data_url, random_image

QUESTION = [{"type": "text", "text": "What is in this picture?"}, {"type": "image"}]
N = 40  # greedy tokens per request: long enough for prompt lookup to find the tiny models' loops


def _accepted(base_url: str) -> int:
    text = httpx.get(f"{base_url}/metrics").text
    found = re.search(r'^vllm_mlx_speculative_accepted_total\{method="ngram"\} (\S+)', text, re.M)
    return int(float(found.group(1))) if found else 0


def _together(calls: dict) -> dict:
    results: dict = {}
    threads = [threading.Thread(target=lambda k=k, f=f: results.__setitem__(k, f())) for k, f in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_mrope_image_and_text_rows_speculate(start_server, models_dir):
    """Qwen2.5-VL: an image row's positions are its cache offset plus its own rope delta, in verify
    steps as in decode steps."""
    # 224x224 images: 64 image tokens on an 8x8 grid of positions, so an image row's positions run 56
    # behind its cache offset
    path = build_tiny_vision_model(models_dir / "tiny-qwen2_5_vl-spec", "qwen2_5_vl", max_pixels=224 * 224)
    server = start_server(path, "--served-model-name", "vl", "--speculative", "ngram")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    images = {k: random_image(k, (224, 224)) for k in (1, 2)}

    def ask(content):
        out = client.chat.completions.create(model="vl", messages=[{"role": "user", "content": content}],
                                             max_tokens=N, temperature=0, extra_body={"ignore_eos": True})
        return out.choices[0].message.content

    story = [{"type": "text", "text": "Tell me a story about the sea."}]
    images_only = _together({k: (lambda k=k: ask(openai_content(QUESTION, [data_url(images[k])]))) for k in (1, 2)})
    for k in (1, 2):
        assert images_only[k] == reference_greedy(path, QUESTION, [images[k]], N)
    assert _accepted(server.base_url) > 0  # the image rows' proposals were verified and kept
    mixed = _together({"text": lambda: ask(story), 2: lambda: ask(openai_content(QUESTION, [data_url(images[2])]))})
    assert mixed["text"] == reference_greedy(path, story, [], N)
    assert mixed[2] == images_only[2]


def test_sliding_window_vision_rows_speculate(start_server, models_dir):
    """Gemma 3: image and text rows, their sliding-window rings cut after each verify step."""
    path = build_tiny_gemma3_vision_model(models_dir / "tiny-gemma3-vision-spec")
    server = start_server(path, "--served-model-name", "gemma", "--speculative", "ngram",
                          "--max-num-batched-tokens", "32")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)

    def chat(messages):
        out = client.chat.completions.create(model="gemma", messages=messages, max_tokens=N, temperature=0,
                                             extra_body={"ignore_eos": True, "enable_thinking": False})
        return out.choices[0].message.content

    results = _together({
        k: (lambda k=k: chat(user(openai_content(GEMMA_QUESTION, [data_url(GEMMA_IMAGES[k])])))) for k in (1, 2)
    } | {"text": lambda: chat(user(STORY[0]["text"]))})
    for k in (1, 2):
        assert results[k] == reference(path, user(GEMMA_QUESTION), [GEMMA_IMAGES[k]], N)[0]
    assert results["text"] == reference(path, user(STORY), [], N)[0]
    assert _accepted(server.base_url) > 0


def test_refused_at_start_saying_why(start_server, models_dir):
    qwen35 = build_tiny_qwen35_vision_model(models_dir / "tiny-qwen35-vision-spec")
    with pytest.raises(RuntimeError, match="Gated DeltaNet"):
        start_server(qwen35, "--speculative", "ngram")
    qwen2_5 = build_tiny_vision_model(models_dir / "tiny-qwen2_5_vl-spec", "qwen2_5_vl", max_pixels=224 * 224)
    with pytest.raises(RuntimeError, match="mtp cannot serve a vision-language model"):
        start_server(qwen2_5, "--speculative", "mtp")
