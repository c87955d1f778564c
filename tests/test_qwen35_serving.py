"""Qwen3.5 (a vision-language checkpoint whose decoder mixes Gated DeltaNet and attention layers):
served with images through mlx-vlm's ``qwen3_5`` in the one engine, or as text with ``--text-only``;
the startup error of an unsupported vision-language architecture; the detection rule.

Greedy outputs are compared with mlx-vlm's own single-request generation of the same prompt, so a
wrong cache layout, a lost recurrent state between prefill chunks, a wrong mrope position or a batch
mix-up shows as different text.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import mlx.core as mx
import openai
import pytest
from vision_helpers import openai_content, reference_greedy, reference_greedy_video

from vllm_mlx.serving.model_setup import model_loader
from vllm_mlx.cli import main as cli_main
from vllm_mlx.config import ServerConfig
from vllm_mlx.media.decode import MediaLimits, decode_video
from vllm_mlx.models.vision_loader import serving_mode
from vllm_mlx_testing.qwen35_vision import build_tiny_qwen35_vision_model
from vllm_mlx_testing.vision_models import data_url, random_image, random_video

N = 12  # greedy tokens compared
QUESTION = [{"type": "text", "text": "What is in this picture?"}, {"type": "image"}]
STORY = [{"type": "text", "text": "Tell me a story about the sea."}]
NO_THINKING = {"enable_thinking": False}
IMAGES = {k: random_image(k, (128, 128)) for k in (1, 2, 3)}  # 8x8 patches = 16 image tokens each


@pytest.fixture(scope="module")
def qwen35(models_dir):
    return build_tiny_qwen35_vision_model(models_dir / "tiny-qwen3.5")


@pytest.fixture(scope="module")
def server(start_server, qwen35):
    # a small step budget: image prompts are prefilled in chunks (the recurrent state carries over,
    # and an image's placeholder run is split across chunks)
    return start_server(qwen35, "--served-model-name", "q35", "--max-num-seqs", "8",
                        "--max-num-batched-tokens", "24")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


def chat(client, content, thinking: bool = False, **kw):
    kw.setdefault("max_tokens", N)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model="q35", messages=[{"role": "user", "content": content}],
        extra_body={"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": thinking}}, **kw)


def ask(client, image: int, **kw):
    return chat(client, openai_content(QUESTION, [data_url(IMAGES[image])]), **kw)


def test_image_request_matches_mlx_vlm(client, qwen35):
    out = ask(client, 1)
    assert out.usage.prompt_tokens > 24  # prefilled in more than one chunk
    assert out.choices[0].message.content == reference_greedy(qwen35, QUESTION, [IMAGES[1]], N, NO_THINKING)
    other = ask(client, 2).choices[0].message.content
    assert other == reference_greedy(qwen35, QUESTION, [IMAGES[2]], N, NO_THINKING)
    assert other != out.choices[0].message.content  # the image reaches the language model


def test_thinking_prompt_reasons_about_the_image(client, qwen35):
    """The template's default generation prompt opens <think>: the text arrives as reasoning."""
    out = ask(client, 3, thinking=True)
    message = out.choices[0].message
    assert not message.content
    reasoning = reference_greedy(qwen35, QUESTION, [IMAGES[3]], N)  # the template's default: thinking on
    assert message.model_extra["reasoning_content"] == reasoning.strip()  # (the parser trims the edges)


def test_video_matches_mlx_vlm(client, qwen35):
    """A video (Qwen3-VL's processor: one timestamped block per frame group)."""
    video = random_video(seconds=2.0, fps=8)
    content = [{"type": "text", "text": "What happens?"}, {"type": "video"}]
    out = chat(client, [content[0], {"type": "video_url", "video_url": {"url": data_url(video, "video/mp4"),
                                                                         "fps": 2.0}}], thinking=True)
    frames = decode_video(video, MediaLimits(), fps=2.0).frames
    expected = reference_greedy_video(qwen35, content, frames, 2.0, N)  # (thinking on)
    assert out.choices[0].message.model_extra["reasoning_content"] == expected.strip()


def test_image_and_text_requests_decode_in_one_batch(client, qwen35, server):
    """Rows with different images (different mrope deltas, different recurrent states) and a text
    row (delta 0) share the decode batch and each still matches its single-request output."""
    long = 120  # long enough that the three overlap even when the CPU is busy
    results, peak = {}, [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], httpx.get(f"{server.base_url}/health").json()["engine"]["running"])
            time.sleep(0.01)

    jobs = {
        "img1": lambda: ask(client, 1, max_tokens=long).choices[0].message.content,
        "img2": lambda: ask(client, 2, max_tokens=long).choices[0].message.content,
        "text": lambda: chat(client, STORY[0]["text"], max_tokens=long).choices[0].message.content,
    }
    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=lambda k=k, fn=fn: results.__setitem__(k, fn())) for k, fn in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert peak[0] >= 2, "the requests never ran together"
    assert results["img1"] == reference_greedy(qwen35, QUESTION, [IMAGES[1]], long, NO_THINKING)
    assert results["img2"] == reference_greedy(qwen35, QUESTION, [IMAGES[2]], long, NO_THINKING)
    assert results["text"] == reference_greedy(qwen35, STORY, [], long, NO_THINKING)


def test_capabilities_and_cache_stats(server, client):
    caps = httpx.get(f"{server.base_url}/v1/capabilities").json()
    assert caps["model"]["multimodal"] is True and "image" in caps["modalities"]["input"]
    ask(client, 1, max_tokens=2)
    stats = httpx.get(f"{server.base_url}/v1/cache/stats").json()
    assert stats["vision_embeddings"]["encoded_items"] >= 1


def test_text_only_flag_serves_the_language_model(start_server, qwen35, client):
    """--text-only: mlx-lm's qwen3_5 serves the same folder as text (the same greedy text as the
    vision server's text row), and an image is a 400 in the API's shape."""
    text_server = start_server(qwen35, "--served-model-name", "q35", "--text-only")
    tc = openai.OpenAI(base_url=f"{text_server.base_url}/v1", api_key="x", max_retries=0)
    answer = chat(tc, STORY[0]["text"]).choices[0].message.content
    assert answer == reference_greedy(qwen35, STORY, [], N, NO_THINKING)
    assert answer == chat(client, STORY[0]["text"]).choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        ask(tc, 1)
    assert "text-only model" in err.value.body["message"] and err.value.body["param"] == "messages.0.content.1"
    caps = httpx.get(f"{text_server.base_url}/v1/capabilities").json()
    assert caps["model"]["multimodal"] is False


def test_moe_variant_and_deterministic_mode(start_server, models_dir):
    """Qwen3.5-MoE (``qwen3_5_moe``): the same engine path; --deterministic decodes every row alone
    in its own per-layer caches."""
    path = build_tiny_qwen35_vision_model(models_dir / "tiny-qwen3.5-moe", num_experts=4)
    moe = start_server(path, "--served-model-name", "q35", "--deterministic")
    mc = openai.OpenAI(base_url=f"{moe.base_url}/v1", api_key="x", max_retries=0)
    assert ask(mc, 1).choices[0].message.content == reference_greedy(path, QUESTION, [IMAGES[1]], N, NO_THINKING)
    assert chat(mc, STORY[0]["text"]).choices[0].message.content == reference_greedy(path, STORY, [], N, NO_THINKING)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_checkpoint_with_images_and_as_text(start_server, models_dir, bits):
    """4- and 8-bit conversions (quantized language model, full-precision vision tower): served with
    images, and with --text-only through mlx-lm."""
    path = build_tiny_qwen35_vision_model(models_dir / f"tiny-qwen3.5-{bits}bit", quantize_bits=bits)
    vision = start_server(path, "--served-model-name", "q35")
    vc = openai.OpenAI(base_url=f"{vision.base_url}/v1", api_key="x", max_retries=0)
    assert ask(vc, 2).choices[0].message.content == reference_greedy(path, QUESTION, [IMAGES[2]], N, NO_THINKING)
    text = start_server(path, "--served-model-name", "q35", "--text-only")
    tc = openai.OpenAI(base_url=f"{text.base_url}/v1", api_key="x", max_retries=0)
    assert chat(tc, STORY[0]["text"]).choices[0].message.content == reference_greedy(path, STORY, [], N, NO_THINKING)


# -- detection and startup errors (no server) ---------------------------------------------------


def _fake_vision_folder(path, model_type: str, weight_names=("vision_tower.patch_embed.weight",)):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "vision_config": {"hidden_size": 8},
                                                  "text_config": {"hidden_size": 8}}))
    mx.save_safetensors(str(path / "model.safetensors"), {name: mx.zeros((2,)) for name in weight_names})
    return path


def test_unsupported_architecture_error_names_it_and_the_way_out(tmp_path):
    folder = _fake_vision_folder(tmp_path / "xyz", "llava")
    with pytest.raises(ValueError) as err:
        model_loader(ServerConfig(model=str(folder)), folder)()
    message = str(err.value)
    assert "vision-language architecture 'llava' is not supported" in message
    assert "--text-only" in message and "qwen3_5" in message  # what to do; the supported families
    assert "--mllm" not in message  # a flag the user did not pass
    with pytest.raises(ValueError) as forced:
        model_loader(ServerConfig(model=str(folder), mllm=True), folder)()
    assert "'llava'" in str(forced.value) and "--mllm" in str(forced.value)


def test_detection_rule(tmp_path, qwen35, tiny_qwen3):
    assert serving_mode(qwen35).vision  # config.json has a vision_config, the weights a vision tower
    assert not serving_mode(qwen35, text_only=True).vision
    assert serving_mode(tiny_qwen3, mllm=True).vision and not serving_mode(tiny_qwen3).vision
    # a text-only conversion that kept the vision_config: its weights hold no vision tower
    converted = _fake_vision_folder(tmp_path / "converted", "qwen3_5", ("language_model.model.norm.weight",))
    mode = serving_mode(converted)
    assert not mode.vision and "no vision tower" in mode.reason
    with pytest.raises(ValueError, match="contradict"):
        serving_mode(qwen35, mllm=True, text_only=True)


def test_text_only_in_config_files_and_print_config(tmp_path, capsys):
    toml = tmp_path / "serve.toml"
    toml.write_text("text-only = true\n")
    assert cli_main(["serve", "some/model", "--config", str(toml), "--print-config"]) == 0
    assert f"text-only = true  # config {toml}" in capsys.readouterr().out
    assert cli_main(["serve", "some/model", "--print-config"]) == 0
    assert "text-only = false" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="contradict"):
        cli_main(["serve", "some/model", "--mllm", "--text-only", "--print-config"])


def test_image_conversation_reuses_the_cache_through_checkpoints(client, server):
    """Turn 2 of an image conversation restores turn 1 from checkpoints (the recurrent state and the
    attention blocks, media keyed by content hash) and answers as with a cold cache."""
    system = {"role": "system", "content": "You describe pictures for a museum catalogue. " * 12}
    turn1 = [system, {"role": "user", "content": openai_content(QUESTION, [data_url(IMAGES[2])])}]
    kw = dict(model="q35", max_tokens=6, temperature=0, extra_body={"chat_template_kwargs": NO_THINKING})
    first = client.chat.completions.create(messages=turn1, **kw)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And the colours?"}]
    warm = client.chat.completions.create(messages=turn2, **kw)
    # all of turn 1 but its generation prompt's closed think block, which turn 2 does not repeat
    assert warm.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 8
    assert httpx.post(f"{server.base_url}/v1/cache/clear").json() == {"cleared": True}
    cold = client.chat.completions.create(messages=turn2, **kw)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.choices[0].message.content == cold.choices[0].message.content
    stats = httpx.get(f"{server.base_url}/v1/cache/stats").json()
    assert stats["mode"] == "checkpoints"
