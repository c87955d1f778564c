"""Tiny, real Qwen2-VL and Qwen3-VL folders built offline, loadable by mlx-vlm's normal loader.

A folder holds what a real checkpoint holds: ``config.json`` (HF field names, a ``vision_config``),
``preprocessor_config.json`` and ``video_preprocessor_config.json`` (the Qwen-VL processor settings,
read by mlx-vlm's numpy image/video processors, so no torch is needed), the tokenizer files (the
locally trained qwen3-family BPE plus the vision special tokens ``<|vision_start|>``,
``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>``), a chat template that renders image and
video content parts as ``<|vision_start|><|image_pad|><|vision_end|>`` like the real Qwen-VL
templates, and ``model.safetensors`` with random weights.

``build_scripted_vision_model`` writes a Qwen2-VL folder whose language model follows a script (see
``scripted_model``): the vision tower is real, the text reply is forced token by token, so tool
calls from a vision request can be tested exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vllm_mlx.models.demo.builder import QWEN3, write_generation_config
from vllm_mlx.models.demo.chat_template import QWEN3_CHAT_TEMPLATE, TEXT_OF_MACRO

from . import scripted_model
from .tokenizer import FAMILY_TOKENS, train_tokenizer

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
ARCHITECTURES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "qwen3_vl": "Qwen3VLForConditionalGeneration"}
PATCH_SIZE = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}

# What the qwen3 template's text macro also renders for a vision model: image and video parts.
_MEDIA_PARTS = """\
{%- elif part is mapping and part.get('type') in ('image', 'image_url') -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif part is mapping and part.get('type') in ('video', 'video_url') -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
"""


def vision_chat_template() -> str:
    """The qwen3 test template whose text macro also renders image and video placeholders."""
    assert QWEN3_CHAT_TEMPLATE.startswith(TEXT_OF_MACRO)
    part_end = "{%- endif -%}\n{%- endfor -%}"
    macro = TEXT_OF_MACRO.replace(part_end, _MEDIA_PARTS + part_end, 1)
    return macro + QWEN3_CHAT_TEMPLATE[len(TEXT_OF_MACRO):]


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def vision_tokenizer(vocab_size: int):
    """The qwen3-family tokenizer trained for ``vocab_size - 4`` ids, plus the four vision tokens."""
    from tokenizers import AddedToken

    tok = train_tokenizer("qwen3", vocab_size - len(VISION_TOKENS))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    assert tok.get_vocab_size() == vocab_size
    return tok


def write_vision_tokenizer(path: Path, vocab_size: int) -> dict[str, Any]:
    tok = vision_tokenizer(vocab_size)
    tok.save(str(path / "tokenizer.json"))
    spec = QWEN3
    specials = [*FAMILY_TOKENS["qwen3"], *((t, True) for t in VISION_TOKENS)]
    added = {
        str(tok.token_to_id(content)): {"content": content, "lstrip": False, "normalized": False,
                                        "rstrip": False, "single_word": False, "special": special}
        for content, special in specials
    }
    template = vision_chat_template()
    write_json(path / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": added, "bos_token": None, "chat_template": template,
        "clean_up_tokenization_spaces": False, "eos_token": spec.eos[0], "errors": "replace",
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 4096,
        "pad_token": spec.pad, "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
    })
    write_json(path / "special_tokens_map.json", {
        "eos_token": spec.eos[0], "pad_token": spec.pad,
        "additional_special_tokens": [t for t, special in specials if special],
    })
    write_json(path / "chat_template.json", {"chat_template": template})
    ids = {t: tok.token_to_id(t) for t in VISION_TOKENS}
    return {
        "eos_token_id": [tok.token_to_id(t) for t in spec.eos],
        "bos_token_id": tok.token_to_id(spec.bos_id_token),
        "pad_token_id": tok.token_to_id(spec.pad),
        "vision": ids,
        "tokenizer": tok,
    }


def write_processor_configs(path: Path, arch: str, *, min_pixels: int, max_pixels: int) -> None:
    patch = PATCH_SIZE[arch]
    common = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "patch_size": patch, "temporal_patch_size": 2, "merge_size": 2,
        "min_pixels": min_pixels, "max_pixels": max_pixels,
    }
    processor = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}.get(arch, "Qwen3VLProcessor")
    write_json(path / "preprocessor_config.json", {
        **common, "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor,
    })
    write_json(path / "video_preprocessor_config.json", {
        **common, "video_processor_type": "Qwen2VLVideoProcessor", "processor_class": processor,
        "fps": 2.0, "min_frames": 2, "max_frames": 16,
    })


def vision_model_config(arch: str, ids: dict[str, Any], *, vocab_size: int, hidden_size: int,
                        num_hidden_layers: int, num_attention_heads: int, num_key_value_heads: int,
                        intermediate_size: int, vision_width: int, vision_depth: int) -> dict[str, Any]:
    head_dim = hidden_size // num_attention_heads
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]  # sums to head_dim / 2
    v = ids["vision"]
    text = {
        "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads,
        "intermediate_size": intermediate_size, "rms_norm_eps": 1e-6, "vocab_size": vocab_size,
        "max_position_embeddings": 4096, "rope_theta": 1000000.0, "head_dim": head_dim,
        "rope_scaling": {"type": "mrope", "mrope_section": section}, "tie_word_embeddings": True,
        "hidden_act": "silu", "attention_bias": False,
    }
    top = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch, "torch_dtype": "float32",
        "image_token_id": v["<|image_pad|>"], "video_token_id": v["<|video_pad|>"],
        "vision_start_token_id": v["<|vision_start|>"], "vision_end_token_id": v["<|vision_end|>"],
        "eos_token_id": ids["eos_token_id"], "bos_token_id": ids["bos_token_id"],
        "vocab_size": vocab_size, "tie_word_embeddings": True, "transformers_version": "4.57.0",
    }
    if arch == "qwen2_vl":
        vision = {"depth": vision_depth, "embed_dim": vision_width, "hidden_size": hidden_size,
                  "num_heads": 2, "mlp_ratio": 2, "patch_size": 14, "spatial_patch_size": 14,
                  "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "model_type": arch}
        return {**top, **text, "vision_config": vision}
    if arch == "qwen2_5_vl":
        vision = {"depth": vision_depth, "hidden_size": vision_width, "intermediate_size": 2 * vision_width,
                  "out_hidden_size": hidden_size, "num_heads": 2, "patch_size": 14, "spatial_patch_size": 14,
                  "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "window_size": 56,
                  "fullatt_block_indexes": [0], "tokens_per_second": 2, "model_type": arch}
        return {**top, **text, "vision_config": vision}
    vision = {"depth": vision_depth, "hidden_size": vision_width, "intermediate_size": 2 * vision_width,
              "out_hidden_size": hidden_size, "num_heads": 2, "patch_size": 16, "spatial_patch_size": 16,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
              "num_position_embeddings": 64, "deepstack_visual_indexes": [0], "model_type": arch,
              "hidden_act": "gelu_pytorch_tanh"}
    return {**top, "text_config": {**text, "model_type": "qwen3_vl_text"}, "vision_config": vision}


def random_vision_weights(config: dict[str, Any], seed: int, init_scale: float = 1.0) -> dict:
    """Instantiate mlx-vlm's model class for ``config`` and return its random parameters."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    arch, _ = get_model_and_args(config)
    cfg = json.loads(json.dumps(config))
    cfg.setdefault("text_config", {})
    model_config = arch.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, arch, cfg, ["text", "vision"])
    mx.random.seed(seed)
    model = arch.Model(model_config)
    weights = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    for name, value in weights.items():  # a livelier random model: outputs depend visibly on every input
        if name.endswith("embed_tokens.weight") or ".mlp." in name:  # (the vision merger's MLP included)
            weights[name] = value * init_scale
    mx.eval(weights)
    return weights


def build_tiny_vision_model(
    path: str | Path,
    arch: str = "qwen2_vl",
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    vision_width: int = 32,
    vision_depth: int = 1,
    min_pixels: int = 28 * 28,
    max_pixels: int = 112 * 112,
    seed: int = 0,
    init_scale: float = 3.0,
) -> Path:
    """Write a tiny random ``arch`` (``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``) folder at ``path``.

    ``min_pixels``/``max_pixels`` bound the resized image (a 112x112 image of qwen2_vl is
    8x8 patches = 16 image tokens), keeping prompts short on a CPU. ``init_scale`` multiplies the
    token embeddings and MLP weights: at 3.0 greedy output varies token by token and differs from
    the first token on between two random images (at 1.0 it repeats one token).
    """
    import mlx.core as mx

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown vision architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_vision_tokenizer(path, vocab_size)
    write_generation_config(path, QWEN3, ids)
    write_processor_configs(path, arch, min_pixels=min_pixels, max_pixels=max_pixels)
    config = vision_model_config(
        arch, ids, vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size, vision_width=vision_width, vision_depth=vision_depth,
    )
    write_json(path / "config.json", config)
    weights = random_vision_weights(config, seed, init_scale)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path


SCRIPTED_VISION_FILE = "scripted_vision_model.py"
SCRIPTED_VISION_SOURCE = scripted_model.model_file_source(
    "Scripted vision test model", "vllm_mlx_testing.scripted_vision", "*"
)


def build_scripted_vision_model(
    path: str | Path,
    rules: Sequence[dict[str, Any]] = (),
    default_reply: str = "I see an image.",
    *,
    vocab_size: int = 2048,
) -> Path:
    """A tiny Qwen2-VL folder (real vision tower) whose text replies follow ``rules`` (see
    ``build_scripted_model``).  mlx-vlm loads it through the config's ``model_file``."""
    path = build_tiny_vision_model(path, "qwen2_vl", vocab_size=vocab_size, num_hidden_layers=1)
    config = json.loads((path / "config.json").read_text())
    tok = vision_tokenizer(vocab_size)
    script = scripted_model.scripted_config(
        tokenizer=tok, rules=list(rules), default_reply=default_reply,
        assistant_marker=QWEN3.assistant_marker,
        eos_token_id=config["eos_token_id"], bos_token_id=config["bos_token_id"], vocab_size=vocab_size,
    )
    config["model_file"] = SCRIPTED_VISION_FILE
    config["script"] = {k: script[k] for k in
                        ("eos_token_id", "assistant_marker", "rules", "default_reply_ids", "token_bytes", "vocab_size")}
    write_json(path / "config.json", config)
    (path / SCRIPTED_VISION_FILE).write_text(SCRIPTED_VISION_SOURCE)
    return path


# -- test media -------------------------------------------------------------------------


def random_image(seed: int, size: tuple[int, int] = (96, 80), fmt: str = "PNG") -> bytes:
    """A random RGB image (``size`` = width, height) encoded as ``fmt``."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def random_video(seconds: float = 2.0, fps: int = 8, size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A short MPEG-4 video of random frames, encoded with PyAV."""
    import io

    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
