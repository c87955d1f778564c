"""Tests for the tiny model folders mlx-lm loads normally: the fixtures (vllm_mlx_testing) and the
demo model (vllm_mlx.models.demo)."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.sample_utils import make_sampler
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

from vllm_mlx.models.demo import DEMO_MODEL_NAME, ensure_demo_model
from vllm_mlx.models.demo import demo_model as demo_mod
from vllm_mlx.models.demo import tokenizer as tokenizer_mod
from vllm_mlx_testing import build_scripted_model, build_tiny_model, train_tokenizer
from vllm_mlx_testing.scripted_model import next_token, reply_progress, select_reply


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

TOOL_HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "text", "text": "What's the weather in 東京?"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "東京"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 23 C"},
]

THINK_TOOL_REPLY = (
    "<think>\nThe user asks about the weather in 東京 ☀️, so call the tool.\n</think>\n\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京", "note": "héllo 🚀"}}\n</tool_call>'
)
RULES = [
    {"if_contains": "Sunny, 23 C", "reply": "It is sunny in 東京: 23 °C."},
    {"if_contains": "weather like in Tokyo", "reply": THINK_TOOL_REPLY},
    {"if_contains": "capital of France", "reply": "The capital of France is Paris."},
]
DEFAULT_REPLY = "I am a scripted model, here to help!"


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {fam: build_tiny_model(root / fam, fam) for fam in ("qwen3", "llama")}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    root = tmp_path_factory.mktemp("scripted")
    out = {}
    for fam in ("qwen3", "llama"):
        path = build_scripted_model(root / fam, RULES, DEFAULT_REPLY, family=fam)
        out[fam] = (path, *mlx_lm.load(str(path), trust_remote_code=True))
    return out


def _chat(tok, messages, **kw):
    return tok.apply_chat_template(messages, add_generation_prompt=True, **kw)


# --------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_deterministic_and_round_trips():
    a = train_tokenizer("qwen3", 2048)
    tokenizer_mod._train_cached.cache_clear()
    b = train_tokenizer("qwen3", 2048)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == 2048
    for word in [" the", " weather", " Paris", " function", " return", "Hello"]:
        assert len(a.encode(word, add_special_tokens=False).ids) == 1, word
    text = 'héllo 日本 🚀 {"a": [1, 2.5]}\n\tdef f(x):  return x  <think>'
    ids = a.encode(text, add_special_tokens=False).ids
    assert a.decode(ids, skip_special_tokens=False) == text
    assert a.token_to_id("<think>") in ids
    llama = train_tokenizer("llama", 2048)
    assert llama.token_to_id("<|eot_id|>") is not None
    assert llama.encode("hi").ids[0] == llama.token_to_id("<|begin_of_text|>")
    with pytest.raises(ValueError):
        train_tokenizer("gpt2")


# --------------------------------------------------------------------------
# Tiny random models


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_tiny_model_loads_and_generates(tiny_paths, family):
    path = tiny_paths[family]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == family
    assert config["architectures"] == [
        "Qwen3ForCausalLM" if family == "qwen3" else "LlamaForCausalLM"
    ]
    assert config["torch_dtype"] == "float32" and config["head_dim"] == 16
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "model.safetensors"]:
        assert (path / name).is_file(), name

    model, tok = mlx_lm.load(str(path))  # strict weight loading
    assert isinstance(tok.detokenizer, BPEStreamingDetokenizer)
    chat_eos = "<|im_end|>" if family == "qwen3" else "<|eot_id|>"
    assert tok.convert_tokens_to_ids(chat_eos) in tok.eos_token_ids
    assert set(config["eos_token_id"]) <= set(tok.eos_token_ids)
    prompt = _chat(tok, [{"role": "user", "content": "Hello!"}], enable_thinking=False)
    out = list(mlx_lm.stream_generate(model, tok, prompt, max_tokens=8))
    assert 1 <= len(out) <= 8 and all(0 <= r.token < config["vocab_size"] for r in out)


def test_tiny_model_is_deterministic(tmp_path):
    a = build_tiny_model(tmp_path / "a", "llama", num_hidden_layers=1, seed=3)
    b = build_tiny_model(tmp_path / "b", "llama", num_hidden_layers=1, seed=3)
    c = build_tiny_model(tmp_path / "c", "llama", num_hidden_layers=1, seed=4)
    data = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert data[0] == data[1] != data[2]


def test_qwen3_chat_template(tiny_paths):
    _, tok = mlx_lm.load(str(tiny_paths["qwen3"]))
    text = tok.apply_chat_template(
        TOOL_HISTORY, tools=TOOLS, add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>\n{"name": <function-name>, "arguments": <arguments-json-object>}' in text
    assert "<|im_start|>user\nWhat's the weather in 東京?<|im_end|>\n" in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}'
        "\n</tool_call><|im_end|>\n"
    ) in text
    assert "<|im_start|>user\n<tool_response>\nSunny, 23 C\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = tok.apply_chat_template(TOOL_HISTORY, add_generation_prompt=True, tokenize=False)
    assert thinking.endswith("<|im_start|>assistant\n") and "# Tools" not in thinking

    # Reasoning before the last user turn is dropped; dict arguments are JSON.
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nHello!"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
    ]
    text = tok.apply_chat_template(history, tokenize=False)
    assert "secret plan" not in text and "<|im_start|>assistant\nHello!<|im_end|>" in text
    assert '{"name": "f", "arguments": {"x": 1}}' in text
    assert tok.tool_call_start == "<tool_call>"  # mlx-lm infers its json_tools parser


def test_llama_chat_template(tiny_paths):
    _, tok = mlx_lm.load(str(tiny_paths["llama"]))
    messages = [*TOOL_HISTORY[:3], {**TOOL_HISTORY[3], "content": {"temp": 23}}]
    text = tok.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    )
    assert "You are a helpful assistant.<|eot_id|>" in text
    user = text.split("<|start_header_id|>user<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]
    assert '"name": "get_weather"' in user and user.endswith("What's the weather in 東京?")
    assert (
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", '
        '"parameters": {"city": "東京"}}<|eot_id|>'
    ) in text
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 23}<|eot_id|>' in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True)
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert ids[0] == bos and ids.count(bos) == 1


# --------------------------------------------------------------------------
# Scripted model


def test_script_rules_unit():
    rules = [{"if_contains": "a", "reply_ids": [1, 2]}, {"if_contains": "b", "reply_ids": [3]}]
    assert select_reply("xbx", rules, [9]) == [3]
    assert select_reply("zzz", rules, [9]) == [9]
    assert reply_progress([7, 1, 2], [1, 2, 3]) == 2
    assert next_token([7], [1, 2], eos=0) == 1
    assert next_token([7, 1, 2], [1, 2], eos=0) == 0


CASES = [
    ([{"role": "user", "content": "What's the weather like in Tokyo?"}], THINK_TOOL_REPLY),
    ([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "What is the capital of France? " + "Please explain. " * 12}],
     "The capital of France is Paris."),
    ([{"role": "user", "content": "hi"}], DEFAULT_REPLY),
    (TOOL_HISTORY, "It is sunny in 東京: 23 °C."),
]


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_scripted_model_exact_reply(scripted, family):
    path, model, tok = scripted[family]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "vllm_mlx_scripted"
    assert config["model_file"] == "scripted_model.py"
    samplers = [None, make_sampler(temp=1.0), make_sampler(temp=0.8, top_p=0.9, top_k=5)]
    for i, (messages, expected) in enumerate(CASES):
        prompt = _chat(tok, messages, tools=TOOLS)
        for sampler in samplers if i == 0 else samplers[:2]:
            mx.random.seed(i)
            out = list(mlx_lm.stream_generate(model, tok, prompt, max_tokens=200, sampler=sampler))
            assert "".join(r.text for r in out) == expected
            assert out[-1].finish_reason == "stop" and out[-1].token in tok.eos_token_ids


def test_scripted_model_batch_generate(scripted):
    _, model, tok = scripted["qwen3"]
    prompts = [_chat(tok, m, enable_thinking=False) for m, _ in CASES[:3]]
    assert len({len(p) for p in prompts}) == 3
    res = mlx_lm.batch_generate(model, tok, prompts, max_tokens=200)
    assert res.texts == [e for _, e in CASES[:3]]
    res = mlx_lm.batch_generate(
        model, tok, prompts[::-1], max_tokens=200, sampler=make_sampler(temp=1.0)
    )
    assert res.texts == [e for _, e in CASES[:3]][::-1]


def test_scripted_model_raw_completion(scripted):
    _, model, tok = scripted["qwen3"]
    prompt = tok.encode("Tell me the capital of France", add_special_tokens=False)
    assert mlx_lm.generate(model, tok, prompt, max_tokens=50) == RULES[2]["reply"]


def test_scripted_rejects_unknown_rule_kind(tmp_path):
    with pytest.raises(ValueError):
        build_scripted_model(tmp_path / "bad", [{"if_equals": "x", "reply": "y"}], "z")


# --------------------------------------------------------------------------
# Demo model


def test_demo_model_deterministic_and_visible(tmp_path):
    assert DEMO_MODEL_NAME == "vllm-mlx-demo"
    a = ensure_demo_model(tmp_path / "a")
    b = ensure_demo_model(tmp_path / "b")
    assert a == tmp_path / "a" / "demo-model-v1" and a.is_dir()
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert ensure_demo_model(tmp_path / "a") == a  # reused
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["demo-model-v1"]

    model, tok = mlx_lm.load(str(a))
    prompt = _chat(tok, [{"role": "user", "content": "Tell me a story."}], enable_thinking=False)
    for sampler in [None, make_sampler(temp=1.0)]:
        mx.random.seed(0)
        out = list(mlx_lm.stream_generate(model, tok, prompt, max_tokens=40, sampler=sampler))
        text = "".join(r.text for r in out)
        assert len(out) == 40 and out[-1].finish_reason == "length"
        visible = sum(not c.isspace() and c != "\ufffd" for c in text)
        assert visible >= 0.7 * len(text) and visible >= 60, text
        assert len({r.token for r in out}) >= 20, text


def test_demo_model_env_and_races(tmp_path, monkeypatch):
    calls = []

    def fake_build(path):
        calls.append(path)
        (path / "model.safetensors").write_bytes(b"mine")
        return path

    monkeypatch.setattr(demo_mod, "build_demo_model", fake_build)
    monkeypatch.setenv("VLLM_MLX_CACHE", str(tmp_path / "env"))
    target = tmp_path / "env" / "demo-model-v1"
    # A stale, incomplete folder is replaced.
    target.mkdir(parents=True)
    (target / "junk").write_text("half written")
    assert ensure_demo_model() == target
    assert (target / "model.safetensors").read_bytes() == b"mine"
    assert not (target / "junk").exists()
    assert ensure_demo_model() == target and len(calls) == 1

    # Losing a race: another builder installs the folder while we build.
    root = tmp_path / "race"
    winner = root / "demo-model-v1"

    def racing_build(path):
        winner.mkdir(parents=True)
        (winner / "model.safetensors").write_bytes(b"winner")
        (winner / demo_mod.DEMO_MARKER).write_text("{}")
        return fake_build(path)

    monkeypatch.setattr(demo_mod, "build_demo_model", racing_build)
    assert ensure_demo_model(root) == winner
    assert (winner / "model.safetensors").read_bytes() == b"winner"
    assert sorted(p.name for p in root.iterdir()) == ["demo-model-v1"]
