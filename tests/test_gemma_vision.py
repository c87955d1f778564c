"""Gemma 3 and Gemma 4 (vision-language checkpoints with sliding-window attention layers): served
with images through mlx-vlm's ``gemma3`` / ``gemma4`` in the one engine, or as text with
``--text-only`` (mlx-lm).

Greedy outputs are compared with mlx-vlm's own single-request generation of the same prompt ids, so
a wrong image expansion or feature scale, a lost sliding window between prefill chunks or a batch
mix-up shows as different text. The tiny models' sliding window is 16 tokens and their prompts are
longer, prefilled in 32-token steps (Gemma 3: the image's 16 soft tokens, at 23-38, split across two).
"""

from __future__ import annotations

import io
import threading
import time

import httpx
import openai
import pytest
from vision_helpers import _load, openai_content

from vllm_mlx_testing.gemma3_vision import build_tiny_gemma3_vision_model
from vllm_mlx_testing.gemma4_vision import build_tiny_gemma4_vision_model
from vllm_mlx_testing.vision_models import data_url, random_image

N = 12  # greedy tokens compared
QUESTION = [{"type": "text", "text": "Look closely. What is in this picture?"}, {"type": "image"}]
STORY = [{"type": "text", "text": "Tell me a story about the sea."}]
IMAGES = {k: random_image(k, (96, 80)) for k in (1, 2, 3)}  # resized to 64x64: 16 soft tokens each


def reference(path, messages: list[dict], images: list[bytes], max_tokens: int) -> tuple[str, int]:
    """mlx-vlm's own greedy text (special tokens dropped) and prompt length for ``messages``: its
    processor expands the template's image markers (and, for Gemma 4, marks the soft tokens for its
    bidirectional attention); the template already starts with ``<bos>``, so the tokenizer adds
    none (as the server encodes chat prompts)."""
    from mlx_vlm.generate.ar import generate_step
    from PIL import Image

    model, processor = _load(str(path))
    prompt = processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    inputs = processor(text=[prompt], images=pil or None, add_special_tokens=False)
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    tokens = [int(tok) for tok, _ in generate_step(ids, model, inputs.get("pixel_values"), inputs["attention_mask"],
                                                   max_tokens=max_tokens, temperature=0.0, **extra)]
    return processor.tokenizer.decode(tokens, skip_special_tokens=True), ids.shape[1]


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def gemma3(models_dir):
    return build_tiny_gemma3_vision_model(models_dir / "tiny-gemma3-vision")


@pytest.fixture(scope="module")
def server(start_server, gemma3):
    return start_server(gemma3, "--served-model-name", "gemma", "--max-num-seqs", "8",
                        "--max-num-batched-tokens", "32")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


def chat(client, messages, **kw):
    kw.setdefault("max_tokens", N)
    kw.setdefault("temperature", 0)
    # (no thinking: mlx-lm's tokenizer would switch on Gemma 4's template's thinking system turn)
    return client.chat.completions.create(model="gemma", messages=messages, **kw,
                                          extra_body={"ignore_eos": True, "enable_thinking": False})


def ask(client, image: int, **kw):
    return chat(client, user(openai_content(QUESTION, [data_url(IMAGES[image])])), **kw)


def test_image_request_matches_mlx_vlm(client, gemma3):
    out = ask(client, 1)
    expected, prompt_tokens = reference(gemma3, user(QUESTION), [IMAGES[1]], N)
    assert out.usage.prompt_tokens == prompt_tokens == 47  # two chunks, longer than the window
    assert out.choices[0].message.content == expected
    other = ask(client, 2).choices[0].message.content
    assert other == reference(gemma3, user(QUESTION), [IMAGES[2]], N)[0]
    assert other != out.choices[0].message.content  # the image reaches the language model


def test_two_images_and_a_system_prompt(client, gemma3):
    """Two images in one message after a system prompt (merged into the first user turn)."""
    content = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": "with"},
               {"type": "image"}]
    messages = [{"role": "system", "content": "You are a careful art critic."}, {"role": "user", "content": content}]
    out = chat(client, [messages[0], user(openai_content(content, [data_url(IMAGES[3]), data_url(IMAGES[1])]))[0]])
    assert out.choices[0].message.content == reference(gemma3, messages, [IMAGES[3], IMAGES[1]], N)[0]


def run_together(base_url: str, jobs: dict) -> dict:
    """Run the jobs (name -> request) concurrently; their texts, after checking that the engine ran
    at least two of them at once."""
    results, peak = {}, [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], httpx.get(f"{base_url}/health").json()["engine"]["running"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=lambda k=k, fn=fn: results.__setitem__(k, fn().choices[0].message.content))
               for k, fn in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert peak[0] >= 2, "the requests never ran together"
    return results


def test_image_and_text_requests_decode_in_one_batch(client, gemma3, server):
    """Rows with different images and a text row share the decode batch (their sliding-window
    caches merged into one batch cache) and each still matches its single-request output."""
    long = 100  # long enough that the three overlap even when the CPU is busy
    results = run_together(server.base_url, {
        "img1": lambda: ask(client, 1, max_tokens=long),
        "img2": lambda: ask(client, 2, max_tokens=long),
        "text": lambda: chat(client, user(STORY[0]["text"]), max_tokens=long),
    })
    assert results["img1"] == reference(gemma3, user(QUESTION), [IMAGES[1]], long)[0]
    assert results["img2"] == reference(gemma3, user(QUESTION), [IMAGES[2]], long)[0]
    assert results["text"] == reference(gemma3, user(STORY), [], long)[0]


def test_sampling_controls_on_an_image_request(client):
    """Seeded sampling with penalties, logprobs and n on an image row: reproducible, and n choices."""
    kw = dict(temperature=0.9, top_p=0.9, seed=7, presence_penalty=0.5, frequency_penalty=0.3,
              logprobs=True, top_logprobs=2, n=2)
    first, second = ask(client, 3, **kw), ask(client, 3, **kw)
    assert len(first.choices) == 2
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert len(first.choices[0].logprobs.content[0].top_logprobs) == 2


def test_image_conversation_reuses_the_cache(client, server):
    """Turn 2 of an image conversation restores turn 1 (the sliding-window layers from checkpoints,
    the image keyed by its content hash) and answers as with a cold cache."""
    system = {"role": "system", "content": "You describe pictures for a museum catalogue. " * 6}
    turn1 = [system, user(openai_content(QUESTION, [data_url(IMAGES[2])]))[0]]
    kw = dict(model="gemma", max_tokens=6, temperature=0)
    first = client.chat.completions.create(messages=turn1, **kw)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And the colours?"}]
    warm = client.chat.completions.create(messages=turn2, **kw)
    assert warm.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 2
    assert httpx.post(f"{server.base_url}/v1/cache/clear").json() == {"cleared": True}
    cold = client.chat.completions.create(messages=turn2, **kw)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.choices[0].message.content == cold.choices[0].message.content
    other = turn2[:1] + [user(openai_content(QUESTION, [data_url(IMAGES[3])]))[0]] + turn2[2:]
    assert client.chat.completions.create(messages=other, **kw).usage.prompt_tokens_details.cached_tokens \
        < first.usage.prompt_tokens - 16  # another picture: no hit past the system prompt
    stats = httpx.get(f"{server.base_url}/v1/cache/stats").json()
    assert stats["mode"] == "checkpoints"


def test_capabilities_and_vision_cache(server, client):
    caps = httpx.get(f"{server.base_url}/v1/capabilities").json()
    assert caps["model"]["multimodal"] is True and caps["modalities"]["input"] == ["text", "image"]
    before = httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]
    ask(client, 1, max_tokens=2)
    after = httpx.get(f"{server.base_url}/v1/cache/stats").json()["vision_embeddings"]
    assert after["hits"] + after["encoded_items"] > before["hits"] + before["encoded_items"]
    with pytest.raises(openai.BadRequestError) as err:  # no video for Gemma 3
        chat(client, user([{"type": "video_url", "video_url": {"url": data_url(b"x", "video/mp4")}}]))
    assert "does not accept video" in err.value.body["message"]


def test_text_only_flag_serves_the_language_model(start_server, gemma3, client):
    """--text-only: mlx-lm's gemma3 serves the same folder as text (the same greedy text as the
    vision server's text row), and an image is a 400 in the API's shape."""
    text_server = start_server(gemma3, "--served-model-name", "gemma", "--text-only")
    tc = openai.OpenAI(base_url=f"{text_server.base_url}/v1", api_key="x", max_retries=0)
    answer = chat(tc, user(STORY[0]["text"])).choices[0].message.content
    assert answer == reference(gemma3, user(STORY), [], N)[0]
    assert answer == chat(client, user(STORY[0]["text"])).choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        ask(tc, 1)
    assert "text-only model" in err.value.body["message"] and err.value.body["param"] == "messages.0.content.1"
    caps = httpx.get(f"{text_server.base_url}/v1/capabilities").json()
    assert caps["model"]["multimodal"] is False


def test_checkpoint_positions_follow_the_image_expansion(gemma3):
    """Template-boundary positions of the rendered prompt (one ``<start_of_image>`` per image) map to
    the expanded prompt (blank lines, soft tokens and ``<end_of_image>`` added around it)."""
    from transformers import AutoTokenizer

    from vllm_mlx.serving.turn_boundaries import remap_after_media

    tok = AutoTokenizer.from_pretrained(str(gemma3))

    def expand(text: str) -> str:
        image = "\n\n<start_of_image>" + "<image_soft_token>" * 16 + "<end_of_image>\n\n"
        return text.replace("<start_of_image>", image)

    rendered = tok.apply_chat_template(user(QUESTION) + [{"role": "assistant", "content": "A cat."}] + user(QUESTION)
                                       + [{"role": "assistant", "content": "A dog."}] + user(STORY),
                                       tokenize=False, add_generation_prompt=True)
    before = tok.encode(rendered, add_special_tokens=False)
    after = tok.encode(expand(rendered), add_special_tokens=False)
    turns = [i for i, t in enumerate(before) if t == tok.convert_tokens_to_ids("<start_of_turn>")]
    mapped = remap_after_media(tuple(turns), before, after, {tok.convert_tokens_to_ids("<image_soft_token>")})
    assert len(mapped) == len(turns) == 6  # five messages and the generation prompt
    for i, j in zip(turns, mapped):  # the same text (the images expanded) before each position
        assert tok.decode(after[:j]) == expand(tok.decode(before[:i]))


def test_quantized_checkpoint_with_images_and_as_text(start_server, models_dir):
    """A 4-bit conversion (quantized language model and tied head, full-precision vision tower):
    served with images, and with --text-only through mlx-lm."""
    path = build_tiny_gemma3_vision_model(models_dir / "tiny-gemma3-4bit", quantize_bits=4)
    vision = openai.OpenAI(base_url=f"{start_server(path, '--served-model-name', 'gemma').base_url}/v1", api_key="x",
                           max_retries=0)
    assert ask(vision, 2).choices[0].message.content == reference(path, user(QUESTION), [IMAGES[2]], N)[0]
    text = openai.OpenAI(base_url=f"{start_server(path, '--served-model-name', 'gemma', '--text-only').base_url}/v1",
                         api_key="x", max_retries=0)
    assert chat(text, user(STORY[0]["text"])).choices[0].message.content == reference(path, user(STORY), [], N)[0]


# -- Gemma 4 ---------------------------------------------------------------------------------------

WIDE = random_image(4, (128, 48))  # resized to 80x32 pixels: 10x4 patches = 5x2 = 10 soft tokens


@pytest.fixture(scope="module")
def gemma4(models_dir):
    return build_tiny_gemma4_vision_model(models_dir / "tiny-gemma4-vision")


@pytest.fixture(scope="module")
def g4_server(start_server, gemma4):
    return start_server(gemma4, "--served-model-name", "gemma", "--max-num-batched-tokens", "32")


def test_gemma4_images_of_any_shape_match_mlx_vlm(g4_server, gemma4):
    """Gemma 4 (per-layer inputs, KV-sharing layers, a sliding window): a square image (16 soft
    tokens) and a wide one (10), and a text row batched with them."""
    g4_client = openai.OpenAI(base_url=f"{g4_server.base_url}/v1", api_key="x", max_retries=0)
    square = chat(g4_client, user(openai_content(QUESTION, [data_url(IMAGES[1])])))
    expected, prompt_tokens = reference(gemma4, user(QUESTION), [IMAGES[1]], N)
    assert (square.choices[0].message.content, square.usage.prompt_tokens) == (expected, prompt_tokens)
    wide = chat(g4_client, user(openai_content(QUESTION, [data_url(WIDE)])))
    expected, prompt_tokens = reference(gemma4, user(QUESTION), [WIDE], N)
    assert (wide.choices[0].message.content, wide.usage.prompt_tokens) == (expected, prompt_tokens)
    assert wide.choices[0].message.content != square.choices[0].message.content
    results = run_together(g4_server.base_url, {
        "img": lambda: chat(g4_client, user(openai_content(QUESTION, [data_url(IMAGES[2])])), max_tokens=100),
        "text": lambda: chat(g4_client, user(STORY[0]["text"]), max_tokens=100),
    })
    assert results["img"] == reference(gemma4, user(QUESTION), [IMAGES[2]], 100)[0]
    assert results["text"] == reference(gemma4, user(STORY), [], 100)[0]


def test_gemma4_text_only(start_server, gemma4):
    """--text-only: mlx-lm's gemma4 serves the folder's language model (the same greedy text as
    mlx-vlm's); an image is a 400."""
    server = start_server(gemma4, "--served-model-name", "gemma", "--text-only")
    tc = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    assert chat(tc, user(STORY[0]["text"])).choices[0].message.content == reference(gemma4, user(STORY), [], N)[0]
    with pytest.raises(openai.BadRequestError, match="text-only model"):
        chat(tc, user(openai_content(QUESTION, [data_url(IMAGES[1])])))


def test_gemma4_bidirectional_image_attention(start_server, models_dir):
    """``use_bidirectional_attention: "vision"``: each image's soft tokens are prefilled in one
    forward, attending both ways, as in mlx-vlm's whole-prompt forward. With 32-token prefill steps
    the first chunk stops before the 36-token run of the first image, the next one runs past its
    budget to the run's end; checkpoints every 8 tokens are saved only outside the runs, and the
    prefix cache hits."""
    path = build_tiny_gemma4_vision_model(models_dir / "tiny-gemma4-bidi", bidirectional=True, max_soft_tokens=40)
    server = start_server(path, "--served-model-name", "gemma", "--max-num-batched-tokens", "32",
                          "--checkpoint-stride", "8")
    bc = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    content = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": "with"},
               {"type": "image"}]
    big = random_image(5, (128, 128))  # 96x96 pixels: 36 soft tokens
    images = [data_url(big), data_url(WIDE)]
    out = chat(bc, user(openai_content(content, images)))
    expected, prompt_tokens = reference(path, user(content), [big, WIDE], N)
    assert (out.choices[0].message.content, out.usage.prompt_tokens) == (expected, prompt_tokens)
    again = chat(bc, user(openai_content(content, images)))
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert again.choices[0].message.content == out.choices[0].message.content
    causal = build_tiny_gemma4_vision_model(models_dir / "tiny-gemma4-causal", max_soft_tokens=40)  # same weights
    assert reference(causal, user(content), [big, WIDE], N)[0] != expected
