"""The LoRA testing helpers (vllm_mlx_testing.lora_adapters) against mlx-lm itself."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner.lora import LoRALinear

from vllm_mlx_testing import (
    build_quantized_tiny_model,
    fused_model,
    greedy_tokens,
    make_lora_adapter,
)

PROMPTS = ["Hello, how are you today?", "The capital of France is", "def main():\n    print(", "One two three four"]
PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def adapter(tiny_qwen3, tmp_path_factory):
    return make_lora_adapter(tiny_qwen3, tmp_path_factory.mktemp("lora") / "seed0", seed=0)


@pytest.fixture(scope="module")
def base_model(tiny_qwen3):
    return load(str(tiny_qwen3))


@pytest.fixture(scope="module")
def lora_model(tiny_qwen3, adapter):
    return load(str(tiny_qwen3), adapter_path=str(adapter))


@pytest.fixture(scope="module")
def prompts(base_model):
    return [base_model[1].encode(p) for p in PROMPTS]


def test_adapter_files_are_mlx_lm_trainer_format(tiny_qwen3, adapter):
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora"
    assert config["num_layers"] == -1
    assert config["lora_parameters"] == {"rank": 4, "scale": 10.0, "dropout": 0.0}
    weights = mx.load(str(adapter / "adapters.safetensors"))
    expected = {f"model.layers.{i}.{p}.{leaf}" for i in range(2) for p in PROJECTIONS for leaf in ("lora_a", "lora_b")}
    assert set(weights) == expected
    hidden = json.loads((tiny_qwen3 / "config.json").read_text())["hidden_size"]
    assert weights["model.layers.0.self_attn.q_proj.lora_a"].shape == (hidden, 4)
    assert weights["model.layers.0.self_attn.q_proj.lora_b"].shape == (4, hidden)
    assert weights["model.layers.1.mlp.down_proj.lora_a"].shape == (128, 4)
    assert all(w.dtype == mx.float32 for w in weights.values())
    assert all(mx.any(w != 0).item() for w in weights.values())


def test_adapter_loads_with_mlx_lm(adapter, lora_model):
    model, _ = lora_model
    loras = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(loras) == 2 * len(PROJECTIONS)
    loaded = dict(tree_flatten(model.parameters()))
    for name, w in mx.load(str(adapter / "adapters.safetensors")).items():
        assert mx.array_equal(loaded[name], w), name


def test_adapter_changes_greedy_output(base_model, lora_model, prompts):
    base = [greedy_tokens(base_model[0], p, 12) for p in prompts]
    lora = [greedy_tokens(lora_model[0], p, 12) for p in prompts]
    assert all(len(t) == 12 for t in base + lora)
    assert sum(b != lo for b, lo in zip(base, lora)) >= 2
    # Changed, not destroyed: the logits still follow the base model's.
    ids = mx.array([prompts[0]])
    b, lo = base_model[0](ids)[0, -1], lora_model[0](ids)[0, -1]
    b, lo = b - b.mean(), lo - lo.mean()
    corr = (mx.sum(b * lo) / mx.sqrt(mx.sum(b * b) * mx.sum(lo * lo))).item()
    assert 0.3 < corr < 0.97


def test_fused_model_matches_unfused(tiny_qwen3, adapter, lora_model, prompts):
    fused, _ = fused_model(tiny_qwen3, adapter)
    kinds = {type(m) for _, m in fused.named_modules()}
    assert LoRALinear not in kinds and nn.Linear in kinds
    for p in prompts:
        assert greedy_tokens(fused, p, 12) == greedy_tokens(lora_model[0], p, 12)
    ids = mx.array([prompts[1]])
    assert mx.allclose(fused(ids), lora_model[0](ids), atol=1e-4).item()


def test_seeds_give_different_reproducible_adapters(tiny_qwen3, adapter, tmp_path):
    again = mx.load(str(make_lora_adapter(tiny_qwen3, tmp_path / "again", seed=0) / "adapters.safetensors"))
    other = mx.load(str(make_lora_adapter(tiny_qwen3, tmp_path / "other", seed=1) / "adapters.safetensors"))
    first = mx.load(str(adapter / "adapters.safetensors"))
    assert set(other) == set(first)
    assert all(mx.array_equal(again[k], first[k]) for k in first)
    assert not any(mx.allclose(other[k], first[k]).item() for k in first)


def test_num_layers_and_keys(tiny_qwen3, tmp_path, base_model, prompts):
    out = make_lora_adapter(tiny_qwen3, tmp_path / "a", num_layers=1, keys=["self_attn.q_proj", "mlp.down_proj"],
                            rank=2, scale=4.0, strength=1.0)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["num_layers"] == 1
    assert config["lora_parameters"]["keys"] == ["self_attn.q_proj", "mlp.down_proj"]
    weights = mx.load(str(out / "adapters.safetensors"))
    assert set(weights) == {f"model.layers.1.{p}.{leaf}" for p in ("self_attn.q_proj", "mlp.down_proj")
                            for leaf in ("lora_a", "lora_b")}
    assert weights["model.layers.1.mlp.down_proj.lora_b"].shape == (2, 64)
    model, _ = load(str(tiny_qwen3), adapter_path=str(out))
    assert [n for n, m in model.named_modules() if isinstance(m, LoRALinear)] == [
        "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(ValueError):
        make_lora_adapter(tiny_qwen3, tmp_path / "b", num_layers=3)


def test_greedy_tokens_eos_stop(base_model, prompts):
    model = base_model[0]
    tokens = greedy_tokens(model, prompts[0], 6)
    assert greedy_tokens(model, prompts[0], 6, eos_ids=[tokens[0]]) == tokens[:1]
    assert greedy_tokens(model, prompts[0], 6, eos_ids=[-1]) == tokens
    assert greedy_tokens(model, prompts[0], 0) == []
    # The cache-driven loop agrees with recomputing the whole sequence each step.
    seq = list(prompts[0])
    for _ in range(3):
        seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
    assert seq[len(prompts[0]):] == tokens[:3]


def test_quantized_model_takes_an_adapter(tmp_path):
    path = build_quantized_tiny_model(tmp_path / "q4", "qwen3", bits=4, group_size=32)
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert (path / "tokenizer.json").exists()
    model, tokenizer = load(str(path))
    assert tokenizer.chat_template
    kinds = {type(m) for _, m in model.named_modules()}
    assert nn.QuantizedLinear in kinds and nn.Linear not in kinds
    ids = tokenizer.encode("Hello there, quantized model")
    base = greedy_tokens(model, ids, 8)

    out = make_lora_adapter(path, tmp_path / "qa", seed=3)
    lora, _ = load(str(path), adapter_path=str(out))
    wrapped = [m.linear for _, m in lora.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * len(PROJECTIONS)
    assert all(isinstance(lin, nn.QuantizedLinear) for lin in wrapped)
    assert len(greedy_tokens(lora, ids, 8)) == 8 and len(base) == 8

    fused, _ = fused_model(path, out)  # re-quantized, as mlx_lm.fuse does without --dequantize
    assert LoRALinear not in {type(m) for _, m in fused.named_modules()}
    assert len(greedy_tokens(fused, ids, 8)) == 8


def test_quantized_group_size_must_divide(tmp_path):
    with pytest.raises(ValueError, match="group_size"):
        build_quantized_tiny_model(tmp_path / "bad", group_size=128)
