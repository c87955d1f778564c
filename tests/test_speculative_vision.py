"""Speculative decoding on vision-language models: image rows (mrope positions offset per row, Gemma 3's
sliding windows, Qwen3.5's recurrent layers rolled back after rejections) and text rows speculate in one
batch, and every request's greedy text is mlx-vlm's own (or the engine's without speculation), with
prompt lookup, a draft model and Qwen3.5's MTP head."""

from __future__ import annotations

import threading

import mlx.core as mx
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
    assert server.health()["engine"]["speculative"]["accepted"] > 0  # the image rows' proposals were kept
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
    assert server.health()["engine"]["speculative"]["accepted"] > 0


@pytest.mark.parametrize("head", ["exact", "random"])
def test_an_mtp_head_on_a_vision_model(head, start_server, models_dir):
    """Qwen3.5 with its MTP head (mlx-lm's layer of the text family, loaded beside mlx-vlm's model): the
    head drafts from the hidden states of decode and verify forwards that place image rows at their own
    positions. With a head whose greedy proposals are the model's next tokens every proposal is taken;
    a random head's are mostly rejected. Greedy text is mlx-vlm's, image rows batched with a text row."""
    from vllm_mlx_testing.builders import add_mtp_head

    path = add_mtp_head(build_tiny_qwen35_vision_model(models_dir / f"tiny-qwen35-vision-mtp-{head}"),
                        exact=head == "exact")
    server = start_server(path, "--served-model-name", "q35", "--speculative", "mtp")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    images = {k: random_image(k, (128, 128)) for k in (1, 2)}
    story = [{"type": "text", "text": "Tell me a story about the sea."}]
    no_thinking = {"enable_thinking": False}

    def ask(content):
        out = client.chat.completions.create(
            model="q35", messages=[{"role": "user", "content": content}], max_tokens=30, temperature=0,
            extra_body={"ignore_eos": True, "chat_template_kwargs": no_thinking})
        return out.choices[0].message.content

    results = _together({k: (lambda k=k: ask(openai_content(QUESTION, [data_url(images[k])]))) for k in (1, 2)}
                        | {"text": lambda: ask(story)})
    for k in (1, 2):
        assert results[k] == reference_greedy(path, QUESTION, [images[k]], 30, no_thinking)
    assert results["text"] == reference_greedy(path, story, [], 30, no_thinking)
    spec = server.health()["engine"]["speculative"]
    assert spec["method"] == "mtp" and spec["verify_steps"] > 0
    if head == "exact":
        assert spec["accepted"] == spec["proposed"] > 0, spec
    else:
        assert spec["proposed"] > spec["accepted"], spec
    assert mx.metal.is_available() or spec["rollback_forwards"] == 0, spec


def test_mtp_on_a_vision_model_without_mtp_weights_is_refused_at_start(start_server, models_dir):
    qwen2_5 = build_tiny_vision_model(models_dir / "tiny-qwen2_5_vl-spec", "qwen2_5_vl", max_pixels=224 * 224)
    with pytest.raises(RuntimeError, match="has no MTP weights"):
        start_server(qwen2_5, "--speculative", "mtp")


def test_hybrid_vision_rows_roll_back_in_the_engine(models_dir):
    """Qwen3.5 (Gated DeltaNet and attention layers, mrope), in the engine: every step verifies each
    row's reference continuation, every third run with its last token wrong, so image rows' proposals
    are accepted whole, in part and not at all, and the rejected ones are rolled back -- each row takes
    its recurrent state after the positions it kept (models/position_states.py), at its own position
    offset. Each row's tokens
    are those of the engine without speculation, alone and batched with a text row."""
    from test_engine import EngineHarness
    from test_speculative import ReferenceProposer, always_verifying

    from vllm_mlx.engine.request import GenerationRequest, SamplingParams
    from vllm_mlx.media.decode import MediaLimits
    from vllm_mlx.media.fetch import FetchPolicy
    from vllm_mlx.models.vision_loader import load_vision_metadata, load_vision_model
    from vllm_mlx.serving.vision_inputs import MediaRef, VisionInputs

    path = build_tiny_qwen35_vision_model(models_dir / "tiny-qwen35-vision-spec")
    meta = load_vision_metadata(path)
    media = VisionInputs(meta.vision, meta.tokenizer, FetchPolicy(), MediaLimits())

    def prompt(content: list[dict], image: bytes | None):
        text = meta.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=False, enable_thinking=False)
        if image is None:
            return meta.tokenizer.encode(text, add_special_tokens=False), None
        return media._process(text, [MediaRef("image", "data:", "messages[0]")], [image])

    prompts = [prompt(QUESTION, random_image(k, (128, 128))) for k in (1, 2)]
    prompts.append(prompt([{"type": "text", "text": "Tell me a story about the sea."}], None))

    def load():
        return load_vision_model(path, compute_dtype="float32")

    def run(harness, which):
        ids = []
        for i in which:
            harness._n += 1
            req = GenerationRequest(f"req-{harness._n}", prompts[i][0], SamplingParams(max_tokens=N, temperature=0,
                                                                                       ignore_eos=True),
                                    multimodal=prompts[i][1])
            harness.engine.add_request(req)
            ids.append(req.request_id)
        return [harness.wait(r)[1] for r in ids]

    off = EngineHarness(path, load=load, max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(path, load=load, max_num_seqs=8, max_num_batched_tokens=64, speculative="ngram")
    try:
        want = [run(off, [i])[0] for i in range(3)]
        on.engine.core.speculator.proposer = ReferenceProposer({tuple(p[0]): w for p, w in zip(prompts, want)})
        with always_verifying(on):
            assert [run(on, [i])[0] for i in range(3)] == want
            assert run(on, [0, 1, 2]) == want
        stats = on.engine.stats.speculative
        assert stats["proposed"] > stats["accepted"] > 0 and stats["verify_steps"] > 10
        if not mx.metal.is_available():  # mlx-vlm's Gated DeltaNets kept each position's state
            assert stats["rollback_forwards"] == 0, stats
    finally:
        off.engine.shutdown()
        on.engine.shutdown()


def test_hybrid_vision_model_serves_with_speculation(start_server, models_dir):
    path = build_tiny_qwen35_vision_model(models_dir / "tiny-qwen35-vision-spec")
    server = start_server(path, "--served-model-name", "q35", "--speculative", "ngram")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    image = random_image(3, (128, 128))
    out = client.chat.completions.create(
        model="q35", messages=[{"role": "user", "content": openai_content(QUESTION, [data_url(image)])}],
        max_tokens=12, temperature=0, extra_body={"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}})
    assert out.choices[0].message.content == reference_greedy(path, QUESTION, [image], 12, {"enable_thinking": False})


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_a_draft_model_for_a_vision_model(family, start_server, models_dir):
    """The vision model's own language model (loaded by mlx-lm, text only) drafts for it: it reads an
    image row's placeholder tokens as tokens and has no image features, so on image rows part of its
    proposals is rejected. Greedy text is mlx-vlm's, image rows batched with a
    text row."""
    if family == "gemma3":
        path = build_tiny_gemma3_vision_model(models_dir / "tiny-gemma3-vision-spec")
        question, images, extra = GEMMA_QUESTION, {k: GEMMA_IMAGES[k] for k in (1, 2)}, {"enable_thinking": False}
    else:
        path = build_tiny_vision_model(models_dir / "tiny-qwen2_5_vl-spec", "qwen2_5_vl", max_pixels=224 * 224)
        question, images, extra = QUESTION, {k: random_image(k, (224, 224)) for k in (1, 2)}, {}
    server = start_server(path, "--served-model-name", "vl", "--draft-model", str(path),
                          "--max-num-batched-tokens", "32")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    story = [{"type": "text", "text": "Tell me a story about the sea."}]

    def ask(content):
        out = client.chat.completions.create(model="vl", messages=[{"role": "user", "content": content}],
                                             max_tokens=N, temperature=0, extra_body={"ignore_eos": True, **extra})
        return out.choices[0].message.content

    results = _together({k: (lambda k=k: ask(openai_content(question, [data_url(images[k])]))) for k in (1, 2)}
                        | {"text": lambda: ask(story)})
    for k in (1, 2):
        want = (reference(path, user(question), [images[k]], N)[0] if family == "gemma3"
                else reference_greedy(path, question, [images[k]], N))
        assert results[k] == want
    assert results["text"] == (reference(path, user(story), [], N)[0] if family == "gemma3"
                               else reference_greedy(path, story, [], N))
    spec = server.health()["engine"]["speculative"]
    assert spec["method"] == "draft" and spec["proposed"] > spec["accepted"] > 0, spec
