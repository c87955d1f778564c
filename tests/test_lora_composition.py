"""LoRA adapters with the rest of the engine: speculation (the drafter ignores adapters, verification
uses them), n > 1, logprobs, deterministic mode, a quantized base, grammars and the engine process."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from test_engine import EngineHarness
from test_lora import PROMPTS, TOKENS, adapters, expected, lora_config  # noqa: F401  (fixtures)


def run_all(h: EngineHarness, names, **params) -> dict:
    """Every (adapter, prompt) request admitted together; their final tokens and last deltas."""
    requests = [(name, i, h.request(p, max_tokens=TOKENS, temperature=0.0, ignore_eos=True, adapter=name, **params))
                for name in names for i, p in enumerate(PROMPTS)]
    h.engine.add_requests([r for _, _, r in requests])
    return {(name, i): h.wait(r.request_id) for name, i, r in requests}


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculation_verifies_with_each_rows_adapter(method, tiny_qwen3, adapters, expected, models_dir):
    """Greedy output with speculation equals mlx-lm's fused output for every adapter, mixed in one batch,
    whatever the drafter proposes (a draft model knows nothing of the adapters)."""
    from vllm_mlx_testing import first_layers_model

    extra = {}
    if method == "draft":
        extra["draft_model"] = str(first_layers_model(tiny_qwen3, models_dir / "lora-draft", 1))
    h = EngineHarness(tiny_qwen3, **lora_config(adapters, speculative=method, **extra))
    try:
        for (name, i), (_, tokens, _) in run_all(h, expected).items():
            assert tokens == expected[name][i], (name, i)
        stats = h.engine.stats.speculative
        assert stats["proposed"] > 0
    finally:
        h.engine.shutdown()


def test_n_logprobs_and_deterministic_mode(tiny_qwen3, adapters, expected):
    """n = 2 gives the adapter's greedy continuation twice; reported logprobs are the adapted model's
    (mlx-lm's fused model scored on the same tokens); deterministic mode gives the same tokens."""
    from mlx_lm.models.cache import make_prompt_cache

    from vllm_mlx_testing import fused_model

    h = EngineHarness(tiny_qwen3, **lora_config(adapters))
    try:
        rid = h.submit(PROMPTS[0], max_tokens=TOKENS, temperature=0.0, ignore_eos=True, adapter="beta", n=2)
        _, _, _ = h.wait(rid)
        by_index = {}
        for o in h.outputs[rid]:
            by_index.setdefault(o.index, []).extend(o.token_ids)
        assert by_index == {0: expected["beta"][0], 1: expected["beta"][0]}
        _, tokens, _ = h.wait(h.submit(PROMPTS[1], max_tokens=TOKENS, temperature=0.0, ignore_eos=True,
                                       adapter="alpha", logprobs=True))
        reported = [lp.logprob for o in h.outputs[f"req-{h._n}"] for lp in o.logprobs]
    finally:
        h.engine.shutdown()
    model, tokenizer = fused_model(tiny_qwen3, adapters["alpha"])
    ids = tokenizer.encode(PROMPTS[1])
    logits = model(mx.array(ids + tokens)[None], cache=make_prompt_cache(model))[0, len(ids) - 1:-1]
    scores = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    want = [scores[j, t].item() for j, t in enumerate(tokens)]
    assert reported == pytest.approx(want, abs=2e-3)

    d = EngineHarness(tiny_qwen3, **lora_config(adapters, deterministic=True))
    try:
        for (name, i), (_, tokens, _) in run_all(d, expected).items():
            assert tokens == expected[name][i], (name, i)
    finally:
        d.engine.shutdown()


def test_a_quantized_base(models_dir):
    """A 4-bit base: the update is added to the quantized layer's output, as mlx-lm's LoRA layers do (the
    reference is mlx-lm's adapter fused into the dequantized weights)."""
    from mlx_lm.utils import load_tokenizer

    from vllm_mlx_testing import build_quantized_tiny_model, fused_model, greedy_tokens, make_lora_adapter

    base = build_quantized_tiny_model(models_dir / "lora-q4", "qwen3", bits=4, group_size=32)
    adapter = make_lora_adapter(base, models_dir / "lora-q4-adapter", seed=4)
    tokenizer = load_tokenizer(base)
    model, _ = fused_model(base, adapter, dequantize=True)
    want = [greedy_tokens(model, tokenizer.encode(p), TOKENS) for p in PROMPTS]
    h = EngineHarness(base, loras=(("q", str(adapter)),))
    try:
        assert [h.wait(h.submit(p, max_tokens=TOKENS, temperature=0.0, ignore_eos=True, adapter="q"))[1]
                for p in PROMPTS] == want
    finally:
        h.engine.shutdown()


def test_grammar_and_the_engine_process(start_server, tiny_qwen3, adapters, expected):
    """A JSON-constrained request under an adapter, and plain ones, through a server whose engine runs in its
    own process: the constraint holds and the adapters' output is mlx-lm's."""
    import openai
    from mlx_lm.utils import load_tokenizer

    server = start_server(tiny_qwen3, "--served-model-name", "tiny", "--engine-process",
                          "--lora", *(f"{n}={p}" for n, p in adapters.items()))
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    tokenizer = load_tokenizer(tiny_qwen3)
    for name in ("alpha", "gamma"):
        out = client.completions.create(model=f"tiny:{name}", prompt=tokenizer.encode(PROMPTS[0]), max_tokens=TOKENS,
                                        temperature=0, extra_body={"ignore_eos": True})
        assert out.choices[0].text == tokenizer.decode(expected[name][0])
    out = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "Give me a JSON object."}], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
            "additionalProperties": False}}})
    assert isinstance(json.loads(out.choices[0].message.content)["ok"], bool)
    assert "beta" in server.health()["engine"]["lora"]["resident"]


@pytest.mark.parametrize("arch", ["qwen3_5", "gemma3_text", "lfm2"])
def test_hybrid_and_sliding_window_models(arch, models_dir):
    """Tiny Qwen3.5 (gated delta nets), Gemma 3 (sliding windows) and LFM2 (short convolutions) with two
    adapters made by mlx-lm: the base and both adapters mixed in one batch, with the prefix cache on,
    give mlx-lm's fused output."""
    from mlx_lm import load
    from mlx_lm.utils import load_tokenizer

    from vllm_mlx_testing import fused_model, greedy_tokens, make_lora_adapter
    from vllm_mlx_testing.arch_models import build_arch_model

    path = build_arch_model(models_dir / f"lora-{arch}", arch)
    made = {f"a{i}": str(make_lora_adapter(path, models_dir / f"lora-{arch}-a{i}", seed=i)) for i in range(2)}
    tokenizer = load_tokenizer(path)
    models = {None: load(str(path))[0]} | {name: fused_model(path, p)[0] for name, p in made.items()}
    want = {name: [greedy_tokens(m, tokenizer.encode(p), TOKENS) for p in PROMPTS] for name, m in models.items()}
    assert want["a0"] != want[None] and want["a1"] != want[None]
    h = EngineHarness(path, loras=tuple(made.items()), max_num_seqs=8, prefix_block_size=4)
    try:
        for (name, i), (_, tokens, _) in run_all(h, want).items():
            assert tokens == want[name][i], (name, i)
    finally:
        h.engine.shutdown()


@pytest.mark.parametrize("arch", ["gpt_oss", "nemotron_h", "qwen3_next"])
def test_mixture_of_experts_models_with_adapted_experts(arch, models_dir):
    """mlx-lm adapts a MoE model's experts by default (each expert its own A and B): tiny gpt-oss,
    Nemotron-H and Qwen3-Next with two such adapters, mixed with the base in one batch, give mlx-lm's
    fused output -- also where mlx-lm sorts the tokens by expert (a long prompt; 36 rows of 2 experts
    each decoding together, their rows' adapters mixed)."""
    from mlx_lm import load
    from mlx_lm.utils import load_tokenizer

    from vllm_mlx_testing import fused_model, greedy_tokens, make_lora_adapter
    from vllm_mlx_testing.arch_models import build_arch_model

    path = build_arch_model(models_dir / f"lora-{arch}", arch)
    made = {f"a{i}": str(make_lora_adapter(path, models_dir / f"lora-{arch}-a{i}", seed=i)) for i in range(2)}
    assert any(len(shape) == 3 for shape in mx.load(made["a0"] + "/adapters.safetensors").values() for shape in
               [shape.shape])  # experts adapted
    tokenizer = load_tokenizer(path)
    prompts = [PROMPTS[0], " ".join(PROMPTS) * 3]
    models = {None: load(str(path))[0]} | {name: fused_model(path, p)[0] for name, p in made.items()}
    want = {name: [greedy_tokens(m, tokenizer.encode(p), TOKENS) for p in prompts] for name, m in models.items()}
    assert want["a0"] != want[None] and want["a1"] != want[None]
    h = EngineHarness(path, loras=tuple(made.items()), max_num_seqs=36, prefix_cache=False)
    try:
        requests = [(name, i, h.request(p, max_tokens=TOKENS, temperature=0.0, ignore_eos=True, adapter=name))
                    for _ in range(6) for name in want for i, p in enumerate(prompts)]
        h.engine.add_requests([r for _, _, r in requests])
        for name, i, r in requests:
            assert h.wait(r.request_id)[1] == want[name][i], (name, i)
    finally:
        h.engine.shutdown()


def test_mtp_speculation_with_adapters(models_dir):
    """--speculative mtp on a tiny Qwen3.5 whose checkpoint carries an MTP head: the head drafts from the
    adapted model's hidden states (it has no adapter of its own) and each row's verify forward applies its
    adapter, so base and adapter rows mixed in one batch give mlx-lm's fused output."""
    from mlx_lm import load
    from mlx_lm.utils import load_tokenizer

    from vllm_mlx_testing import add_mtp_head, fused_model, greedy_tokens, make_lora_adapter
    from vllm_mlx_testing.arch_models import build_arch_model

    path = add_mtp_head(build_arch_model(models_dir / "lora-mtp", "qwen3_5"))
    made = {"a": str(make_lora_adapter(path, models_dir / "lora-mtp-a", seed=2))}
    tokenizer = load_tokenizer(path)
    models = {None: load(str(path))[0], "a": fused_model(path, made["a"])[0]}
    want = {name: [greedy_tokens(m, tokenizer.encode(p), TOKENS) for p in PROMPTS] for name, m in models.items()}
    h = EngineHarness(path, loras=tuple(made.items()), speculative="mtp", max_num_seqs=8)
    try:
        for (name, i), (_, tokens, _) in run_all(h, want).items():
            assert tokens == want[name][i], (name, i)
        assert h.engine.stats.speculative["proposed"] > 0
    finally:
        h.engine.shutdown()
