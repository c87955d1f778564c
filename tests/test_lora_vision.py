"""LoRA adapters on a vision-language model (a tiny Qwen3.5 checkpoint served through mlx-vlm): image
and text rows under an adapter answer as mlx-vlm does with the adapter fused into the language model,
beside rows of the base model in the same batch."""

from __future__ import annotations

import threading

import mlx.core as mx
import openai
import pytest
from vision_helpers import greedy_text, openai_content, reference_greedy

from vllm_mlx_testing.qwen35_vision import build_tiny_qwen35_vision_model
from vllm_mlx_testing.vision_models import data_url, random_image

N = 12
QUESTION = [{"type": "text", "text": "What is in this picture?"}, {"type": "image"}]
IMAGE = random_image(7, (128, 128))


@pytest.fixture(scope="module")
def qwen35(models_dir):
    return build_tiny_qwen35_vision_model(models_dir / "lora-qwen3.5-vl")


@pytest.fixture(scope="module")
def adapter(qwen35, models_dir):
    """An adapter made by mlx-lm's LoRA layers on the checkpoint's language model (its text view)."""
    from vllm_mlx_testing import make_lora_adapter

    return make_lora_adapter(qwen35, models_dir / "lora-qwen3.5-vl-adapter", seed=5)


def fused_reference(path, adapter_path, content, images, max_tokens) -> str:
    """mlx-vlm's own greedy generation with the adapter fused into the language model's weights."""
    import json

    from mlx_vlm import load

    model, processor = load(str(path))
    scale = json.loads((adapter_path / "adapter_config.json").read_text())["lora_parameters"]["scale"]
    weights = mx.load(str(adapter_path / "adapters.safetensors"))
    modules = dict(model.named_modules())
    for layer in {key.rsplit(".", 1)[0] for key in weights}:
        linear = modules[layer]
        delta = (scale * weights[f"{layer}.lora_b"].T) @ weights[f"{layer}.lora_a"].T
        linear.weight = linear.weight + delta.astype(linear.weight.dtype)
    return greedy_text(model, processor, content, images, max_tokens, {"enable_thinking": False})


def test_image_and_text_rows_under_an_adapter(start_server, qwen35, adapter):
    server = start_server(qwen35, "--served-model-name", "q35", "--max-num-seqs", "8", "--lora", f"tuned={adapter}")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)

    def chat(model, content):
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=N, temperature=0,
            extra_body={"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}})
        return out.choices[0].message.content

    image = openai_content(QUESTION, [data_url(IMAGE)])
    text = [{"type": "text", "text": "Tell me a story about the sea."}]
    want = {("tuned", "image"): fused_reference(qwen35, adapter, QUESTION, [IMAGE], N),
            ("q35", "image"): reference_greedy(qwen35, QUESTION, [IMAGE], N, {"enable_thinking": False}),
            ("tuned", "text"): fused_reference(qwen35, adapter, text, [], N)}
    assert want[("tuned", "image")] != want[("q35", "image")]
    got: dict = {}
    calls = [(model, kind) for model, kind in want] * 2
    threads = [threading.Thread(target=lambda i=i, c=c: got.__setitem__(i, chat(c[0], image if c[1] == "image"
                                                                                  else text)))
               for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, call in enumerate(calls):
        assert got[i] == want[call], call
