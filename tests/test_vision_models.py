"""Vision: Qwen3-VL (deepstack) end to end, a tool call from a vision model, text-only models refusing
images, detection from metadata, and the prefix-cache key of multimodal prompts."""

from __future__ import annotations

import base64
import json
import shutil
import threading

import anthropic
import numpy as np
import openai
import pytest
from vision_helpers import openai_content, reference_greedy, reference_greedy_video

from vllm_mlx.engine.multimodal import MediaItem, MultimodalPrompt
from vllm_mlx.media.decode import (
    MediaDecodeError,
    MediaLimits,
    decode_image,
    decode_video,
)
from vllm_mlx.models.vision_loader import vision_evidence
from vllm_mlx_testing.vision_models import (
    build_scripted_vision_model,
    build_tiny_vision_model,
    data_url,
    random_image,
    random_video,
)

QUESTION = [{"type": "text", "text": "What is in this picture?"}, {"type": "image"}]
TOOLS = [{"type": "function", "function": {"name": "describe_image", "description": "Record what an image shows",
                                           "parameters": {"type": "object", "properties": {
                                               "label": {"type": "string"}}, "required": ["label"]}}}]
TOOL_REPLY = '<tool_call>\n{"name": "describe_image", "arguments": {"label": "a cat"}}\n</tool_call>'


@pytest.fixture(scope="module")
def qwen3vl(models_dir):
    return build_tiny_vision_model(models_dir / "tiny-qwen3-vl", "qwen3_vl")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_matches_mlx_vlm_alone_and_batched(start_server, models_dir, arch):
    """Qwen2.5-VL (windowed vision attention) and Qwen3-VL (deepstack features, another mrope layout)."""
    # 224x224 images = 64 image tokens, more than one 32-token prefill chunk
    path = build_tiny_vision_model(models_dir / f"tiny-{arch}-224", arch, max_pixels=224 * 224)
    # a small step budget: image prompts are prefilled in chunks (an image run split across chunks)
    server = start_server(path, "--served-model-name", "vl3", "--max-num-batched-tokens", "24")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    images = {k: random_image(k, (224, 224)) for k in (1, 2)}

    def ask(key, n=10):
        content = openai_content(QUESTION, [data_url(images[key])])
        return client.chat.completions.create(model="vl3", messages=[{"role": "user", "content": content}],
                                              max_tokens=n, temperature=0, extra_body={"ignore_eos": True})

    first = ask(1)
    assert first.usage.prompt_tokens > 64  # so it took several 32-token chunks
    assert first.choices[0].message.content == reference_greedy(path, QUESTION, [images[1]], 10)
    results = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, ask(k, 24).choices[0].message.content))
               for k in (1, 2)]
    threads.append(threading.Thread(target=lambda: results.__setitem__("text", client.chat.completions.create(
        model="vl3", messages=[{"role": "user", "content": "hello"}], max_tokens=24, temperature=0).choices[0])))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (1, 2):
        assert results[k] == reference_greedy(path, QUESTION, [images[k]], 24)
    assert results["text"].finish_reason in ("stop", "length")
    # a video, frames sampled at 2 fps (Qwen3-VL: one timestamped block per frame group)
    video = random_video(seconds=2.0, fps=8)
    frames = decode_video(video, MediaLimits(), fps=2.0).frames
    content = [{"type": "text", "text": "What happens?"}, {"type": "video"}]
    out = client.chat.completions.create(model="vl3", max_tokens=10, temperature=0, extra_body={"ignore_eos": True},
                                         messages=[{"role": "user", "content": [content[0], {
                                             "type": "video_url", "video_url": {"url": data_url(video, "video/mp4"),
                                                                                "fps": 2.0}}]}])
    assert out.choices[0].message.content == reference_greedy_video(path, content, frames, 2.0, 10)


def test_tool_call_from_a_vision_request(start_server, models_dir):
    path = build_scripted_vision_model(models_dir / "scripted-vl", [{"if_contains": "label", "reply": TOOL_REPLY}])
    server = start_server(path, "--trust-remote-code", "--served-model-name", "svl")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    content = [{"type": "image_url", "image_url": {"url": data_url(random_image(5))}},
               {"type": "text", "text": "Give this image a label."}]
    out = client.chat.completions.create(model="svl", messages=[{"role": "user", "content": content}], tools=TOOLS)
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "describe_image" and json.loads(call.function.arguments) == {"label": "a cat"}
    # streamed, the call arrives as tool_call deltas
    stream = client.chat.completions.create(model="svl", messages=[{"role": "user", "content": content}],
                                            tools=TOOLS, stream=True)
    names = [d.function.name for c in stream if c.choices for d in (c.choices[0].delta.tool_calls or [])
             if d.function and d.function.name]
    assert names == ["describe_image"]
    # Anthropic: a tool_use block from an image block
    ac = anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0)
    msg = ac.messages.create(model="svl", max_tokens=64, tools=[{
        "name": "describe_image", "input_schema": TOOLS[0]["function"]["parameters"]}], messages=[{
            "role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": base64.b64encode(random_image(6)).decode()}},
                {"type": "text", "text": "Give this image a label."}]}])
    assert msg.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in msg.content if b.type == "tool_use"] == [("describe_image", {"label": "a cat"})]
    # without the keyword the default reply comes back as text
    plain = client.chat.completions.create(model="svl", messages=[{"role": "user", "content": [
        content[0], {"type": "text", "text": "What is it?"}]}])
    assert plain.choices[0].message.content == "I see an image."


def test_text_only_model_refuses_images(qwen3_server):
    client = openai.OpenAI(base_url=f"{qwen3_server.base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-qwen3", messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": data_url(random_image(1))}}]}])
    assert "text-only model" in err.value.body["message"] and err.value.body["param"] == "messages.0.content.1"
    ac = anthropic.Anthropic(base_url=qwen3_server.base_url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as aerr:
        ac.messages.create(model="tiny-qwen3", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(random_image(1)).decode()}}]}])
    assert aerr.value.body["type"] == "error" and "text-only model" in aerr.value.body["error"]["message"]


def test_detection_from_metadata(tmp_path, qwen3vl, tiny_qwen3):
    assert vision_evidence(qwen3vl) == "config.json has 'vision_config'"
    assert vision_evidence(tiny_qwen3) is None
    # an image processor config alone, or vision-tower weight names alone, also say "vision"
    proc_only = tmp_path / "proc"
    shutil.copytree(tiny_qwen3, proc_only)
    (proc_only / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Qwen2VLImageProcessor"}))
    assert "image processor" in vision_evidence(proc_only)
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    (weights_only / "config.json").write_text(json.dumps({"model_type": "whatever"}))
    import mlx.core as mx

    mx.save_safetensors(str(weights_only / "model.safetensors"), {"visual.patch_embed.proj.weight": mx.zeros((2,))})
    assert "vision tower" in vision_evidence(weights_only)


def _item(seed: int) -> MediaItem:
    pixels = np.random.default_rng(seed).random((16, 8)).astype(np.float32)
    return MediaItem.make("image", pixels, (1, 4, 4), merge_size=2)


def test_prefix_key_depends_on_image_content():
    ids = [5, 6, 99, 99, 99, 99, 7]
    a = MultimodalPrompt.build([_item(1)], ids, {"image": 99, "video": 98})
    b = MultimodalPrompt.build([_item(2)], ids, {"image": 99, "video": 98})
    same = MultimodalPrompt.build([_item(1)], ids, {"image": 99, "video": 98})
    assert a.key_ids[:2] == ids[:2] and a.key_ids[-1] == 7
    assert a.key_ids != b.key_ids and a.key_ids == same.key_ids
    assert all(k < 0 for k in a.key_ids[2:6])
    with pytest.raises(ValueError, match="placeholder"):
        MultimodalPrompt.build([_item(1)], [5, 99, 99, 7], {"image": 99, "video": 98})


def test_image_limits():
    with pytest.raises(MediaDecodeError, match="pixels"):
        decode_image(random_image(1, size=(200, 200)), MediaLimits(max_image_pixels=100 * 100))
    with pytest.raises(MediaDecodeError, match="could not be decoded"):
        decode_image(b"GIF89a-truncated", MediaLimits())
    assert decode_image(random_image(1, fmt="JPEG"), MediaLimits()).mode == "RGB"
    # transparency over white; EXIF orientation applied
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (4, 2), (0, 0, 0, 0)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), MediaLimits()).getpixel((0, 0)) == (255, 255, 255)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.new("RGB", (8, 2)).save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), MediaLimits()).size == (2, 8)


def test_mllm_flag_on_an_unsupported_architecture_fails_at_startup(start_server, tiny_qwen3):
    with pytest.raises(RuntimeError, match="not supported by this server's engine"):
        start_server(tiny_qwen3, "--mllm")
