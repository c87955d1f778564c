"""Tests for vllm_mlx_testing.arch_models: tiny hybrid / sliding-window models."""

from __future__ import annotations

import hashlib
import json

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

from vllm_mlx_testing.arch_models import (ARCHITECTURES, MTP_ARCHITECTURES, SLIDING_WINDOW, arch_config,
                                          build_arch_model)

EXPECTED_CACHES = {
    "qwen3_5": ["ArraysCache", "ArraysCache", "ArraysCache", "KVCache"],
    "qwen3_next": ["ArraysCache", "ArraysCache", "ArraysCache", "KVCache"],
    "gemma3_text": ["RotatingKVCache", "RotatingKVCache", "RotatingKVCache", "KVCache"],
    "gemma4_text": ["RotatingKVCache", "KVCache"],  # layers 2-3 share the KV of layers 0-1
    "gpt_oss": ["RotatingKVCache", "KVCache", "RotatingKVCache", "KVCache"],
    "nemotron_h": ["ArraysCache", "KVCache"],  # pattern "ME*-": only M and * blocks have caches
    "falcon_h1": ["CacheList", "CacheList"],
    "lfm2": ["ArraysCache", "ArraysCache", "KVCache", "ArraysCache"],
}

# (generation prompt the template ends with, end-of-turn token that must be an EOS)
FORMATS = {
    "qwen3_5": ("<|im_start|>assistant\n<think>\n", "<|im_end|>"),
    "qwen3_next": ("<|im_start|>assistant\n", "<|im_end|>"),
    "gemma3_text": ("<start_of_turn>model\n", "<end_of_turn>"),
    "gemma4_text": ("<|turn>model\n", "<turn|>"),
    "gpt_oss": ("<|start|>assistant", "<|return|>"),
    "nemotron_h": ("<|im_start|>assistant\n<think>\n", "<|im_end|>"),
    "falcon_h1": ("<|im_start|>assistant\n", "<|im_end|>"),
    "lfm2": ("<|im_start|>assistant\n", "<|im_end|>"),
    "glm4_moe": ("<|assistant|>", "<|user|>"),
    "glm4_moe_lite": ("<|assistant|>", "<|observation|>"),
    "mimo": ("<|im_start|>assistant\n", "<|im_end|>"),
}

MARKERS = {
    "qwen3_5": ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "<tool_response>"],
    "qwen3_next": ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"],
    "gemma3_text": ["<bos>", "<start_of_turn>", "<end_of_turn>"],
    "gemma4_text": ["<bos>", "<|turn>", "<turn|>", "<|tool_call>", "<tool_call|>", '<|"|>', "<|channel>"],
    "gpt_oss": ["<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|call|>", "<|return|>", "<|constrain|>"],
    "nemotron_h": ["<|im_start|>", "<|im_end|>", "<think>", "<tool_call>"],
    "falcon_h1": ["<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<tool_call>"],
    "lfm2": ["<|startoftext|>", "<|im_start|>", "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_list_start|>"],
    "glm4_moe": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<arg_key>"],
    "glm4_moe_lite": ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_value>", "</arg_value>"],
    "mimo": ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"],
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TURN1 = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 C"},
    {"role": "assistant", "content": "It is sunny.", "reasoning_content": "The tool says sunny."},
]
TURN2 = [*TURN1, {"role": "user", "content": "And tomorrow?"}]


@pytest.fixture(scope="module")
def arch_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    return {arch: build_arch_model(root / arch, arch) for arch in ARCHITECTURES + MTP_ARCHITECTURES}


@pytest.fixture(scope="module")
def loaded(arch_paths):
    cache: dict = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = mlx_lm.load(str(arch_paths[arch]))
        return cache[arch]

    get.paths = arch_paths
    return get


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True, **kwargs)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_with_hybrid_caches(arch, arch_paths, loaded):
    config = json.loads((arch_paths[arch] / "config.json").read_text())
    text = config.get("text_config", config)
    assert config["architectures"] and text["vocab_size"] == 1024 and text["hidden_size"] == 64
    model, _ = loaded(arch)  # strict load: no missing or extra weights
    caches = make_prompt_cache(model)
    assert [type(c).__name__ for c in caches] == EXPECTED_CACHES[arch]
    assert any(type(c) is not KVCache for c in caches)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generates_past_the_sliding_window(arch, loaded):
    model, tokenizer = loaded(arch)
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 8, add_special_tokens=False)
    assert len(prompt) > 3 * SLIDING_WINDOW
    cache = make_prompt_cache(model)
    tokens = [tok for (tok, _), _ in zip(generate_step(mx.array(prompt), model, prompt_cache=cache), range(6))]
    assert len(tokens) == 6 and all(0 <= t < 1024 for t in tokens)
    for c in cache:
        if isinstance(c, RotatingKVCache):
            assert c.max_size == SLIDING_WINDOW and c.offset > c.max_size
    text = "".join(r.text for r in mlx_lm.stream_generate(model, tokenizer, "Hello there", max_tokens=4))
    assert isinstance(text, str)


@pytest.mark.parametrize("arch", ARCHITECTURES + MTP_ARCHITECTURES)
def test_chat_template_and_tokens(arch, loaded):
    _, tokenizer = loaded(arch)
    gen_prompt, end_of_turn = FORMATS[arch]
    prompt = render(tokenizer, TURN2)
    assert prompt.endswith(gen_prompt)
    assert "You are a terse assistant." in prompt and "get_weather" in prompt and "Sunny, 22 C" in prompt
    assert prompt.count("And tomorrow?") == 1 and "It is sunny." in prompt
    for marker in MARKERS[arch]:
        assert len(tokenizer.encode(marker, add_special_tokens=False)) == 1, marker
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert tokenizer.decode(ids) == prompt
    assert tokenizer.convert_tokens_to_ids(end_of_turn) in tokenizer.eos_token_ids
    assert render(tokenizer, TURN2) == prompt  # deterministic (no clock in any template)


def test_qwen3_5_thinking_and_xml_tools(loaded):
    _, tokenizer = loaded("qwen3_5")
    turn1 = render(tokenizer, TURN1[:4])
    assert "<think>\nI should call the tool.\n</think>\n\n" in turn1  # after the last user query: kept
    assert ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
            "</tool_call><|im_end|>") in turn1
    assert "<|im_start|>user\n<tool_response>\nSunny, 22 C\n</tool_response><|im_end|>" in turn1
    turn2 = render(tokenizer, TURN2)
    assert "I should call the tool." not in turn2 and "The tool says sunny." not in turn2
    assert "<|im_start|>assistant\nIt is sunny.<|im_end|>" in turn2
    assert turn2.startswith("<|im_start|>system\nYou are a terse assistant.\n\n# Tools")
    no_think = render(tokenizer, TURN2, enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    inline = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"},
              {"role": "user", "content": "again"}]
    assert "<|im_start|>assistant\nA<|im_end|>" in render(tokenizer, inline)
    two_results = [*TURN1[:3], TURN1[3], {"role": "tool", "content": "Windy"}]
    assert render(tokenizer, two_results).count("<|im_start|>user\n<tool_response>") == 1
    # The tool loop re-renders what the model generated after the turn-1 prompt unchanged.
    generated = ("I should call the tool.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\n"
                 "Paris\n</parameter>\n</function>\n</tool_call><|im_end|>\n")
    assert turn1.startswith(render(tokenizer, TURN1[:2]) + generated)


def test_gpt_oss_harmony(loaded):
    _, tokenizer = loaded("gpt_oss")
    turn1 = render(tokenizer, TURN1[:4])
    assert turn1.startswith("<|start|>system<|message|>") and "Current date: 2025-06-01" in turn1
    assert "<|start|>developer<|message|># Instructions\n\nYou are a terse assistant." in turn1
    assert "type get_weather = (_: {\n// City name\ncity: string,\ndays?: number,\n}) => any;" in turn1
    assert "<|start|>assistant<|channel|>analysis<|message|>I should call the tool.<|end|>" in turn1
    assert ('<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
            '{"city": "Paris"}<|call|>') in turn1
    assert "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>Sunny, 22 C<|end|>" in turn1
    generated = ("<|channel|>analysis<|message|>I should call the tool.<|end|><|start|>assistant<|channel|>commentary"
                 ' to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>')
    assert turn1.startswith(render(tokenizer, TURN1[:2]) + generated)
    turn2 = render(tokenizer, TURN2)
    assert "<|channel|>analysis" not in turn2
    assert "<|start|>assistant<|channel|>final<|message|>It is sunny.<|end|>" in turn2
    assert "Reasoning: high" in render(tokenizer, TURN2, reasoning_effort="high")


def test_gemma_formats(loaded):
    _, g3 = loaded("gemma3_text")
    prompt = render(g3, TURN2)
    assert prompt.startswith("<bos><start_of_turn>user\nYou are a terse assistant.\n\n")
    assert '<start_of_turn>model\n[get_weather(city="Paris")]<end_of_turn>' in prompt
    assert "system" not in prompt.split("<start_of_turn>")[1][:10]
    _, g4 = loaded("gemma4_text")
    prompt = render(g4, TURN2, enable_thinking=False)
    assert prompt.startswith("<bos><|turn>system\nYou are a terse assistant.<|tool>declaration:get_weather{")
    assert ('<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
            '<|tool_response>response:get_weather{value:<|"|>Sunny, 22 C<|"|>}<tool_response|>'
            "It is sunny.<turn|>\n") in prompt
    generated = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|><|tool_response>'
    start = render(g4, TURN1[:2], enable_thinking=False)
    assert start.endswith("<|turn>model\n") and render(g4, TURN1[:4], enable_thinking=False).startswith(start + generated)
    assert render(g4, TURN1[:4], enable_thinking=False).endswith("<tool_response|>")  # the model turn goes on
    assert render(g4, TURN2, enable_thinking=True).startswith("<bos><|turn>system\n<|think|>")


def test_other_families(loaded):
    _, lfm2 = loaded("lfm2")
    prompt = render(lfm2, TURN2)
    assert prompt.startswith("<|startoftext|><|im_start|>system\nYou are a terse assistant.\nList of tools: ")
    assert '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>' in prompt
    _, falcon = loaded("falcon_h1")
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in render(falcon, TURN2)
    _, nemotron = loaded("nemotron_h")
    bare = nemotron.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert bare == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_glm45_format_and_mixture_of_experts_models(loaded):
    """GLM-4.5's format (role tokens that open turns and end the model's, think blocks kept after the
    last user message only, XML argument calls, results in an observation turn), and the two
    mixture-of-experts models: GLM-4.5's grouped-query attention and GLM-4.7-Flash's latent one
    (DeepSeek-V3's, whose cache keeps the latent and the rotary key)."""
    model, tokenizer = loaded("glm4_moe")
    turn1 = render(tokenizer, TURN1[:4])
    assert turn1.startswith("[gMASK]<sop><|system|>\n# Tools") and "<|system|>\nYou are a terse assistant." in turn1
    generated = ("\n<think>I should call the tool.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
                 "<arg_value>Paris</arg_value>\n</tool_call><|observation|>")
    assert turn1.startswith(render(tokenizer, TURN1[:2]) + generated)  # the tool loop re-renders it unchanged
    assert turn1.endswith("<|observation|>\n<tool_response>\nSunny, 22 C\n</tool_response><|assistant|>")
    turn2 = render(tokenizer, TURN2)
    assert "I should call the tool." not in turn2 and "<|assistant|>\n<think></think>\nIt is sunny.<|user|>" in turn2
    assert render(tokenizer, TURN2, enable_thinking=False).endswith("And tomorrow?/nothink<|assistant|>\n<think></think>")
    assert [type(c).__name__ for c in make_prompt_cache(model)] == ["KVCache"] * 4
    latent, _ = loaded("glm4_moe_lite")
    cache = make_prompt_cache(latent)
    logits = latent(mx.array([[5, 6, 7]]), cache=cache)
    config = json.loads((loaded.paths["glm4_moe_lite"] / "config.json").read_text())
    assert logits.shape == (1, 3, 1024) and cache[0].keys.shape[-1] == config["kv_lora_rank"]
    assert cache[0].values.shape[-1] == config["qk_rope_head_dim"]


def test_build_is_deterministic_and_layers_override(tmp_path):
    a = build_arch_model(tmp_path / "a", "lfm2", seed=3)
    b = build_arch_model(tmp_path / "b", "lfm2", seed=3)
    digest = [hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest() for p in (a, b)]
    assert digest[0] == digest[1]
    for arch, n in (("qwen3_5", 2), ("gemma3_text", 6), ("nemotron_h", 3), ("gpt_oss", 6)):
        config = arch_config(arch, num_hidden_layers=n)
        text = config.get("text_config", config)
        kinds = text.get("layer_types") or list(text["hybrid_override_pattern"])
        assert len(kinds) == n and len(set(kinds)) >= 2
    with pytest.raises(ValueError):
        build_arch_model(tmp_path / "x", "mamba")
