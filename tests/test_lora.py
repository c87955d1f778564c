"""LoRA adapters (--lora NAME=PATH): each request's output is what mlx-lm gives with its adapter fused,
rows of different adapters share each batch, and cached prefixes never cross adapters."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from test_engine import EngineHarness
from test_speculative import refused_at_start

PROMPTS = ["The quick brown fox jumps over", "Once upon a time, in a land far away, there lived"]
TOKENS = 16


@pytest.fixture(scope="module")
def adapters(tiny_qwen3, models_dir) -> dict[str, str]:
    """Three adapters made with mlx-lm's LoRA layers: every linear layer at rank 4; only the attention's
    q and v projections at rank 8 (other layers and a larger rank than the others); the last layer only."""
    from vllm_mlx_testing import make_lora_adapter

    return {
        "alpha": str(make_lora_adapter(tiny_qwen3, models_dir / "lora-alpha", seed=1)),
        "beta": str(make_lora_adapter(tiny_qwen3, models_dir / "lora-beta", seed=2, rank=8,
                                      keys=["self_attn.q_proj", "self_attn.v_proj"])),
        "gamma": str(make_lora_adapter(tiny_qwen3, models_dir / "lora-gamma", seed=3, rank=2, num_layers=1)),
    }


@pytest.fixture(scope="module")
def expected(tiny_qwen3, adapters) -> dict[str | None, list[list[int]]]:
    """Per adapter (None: the base), each prompt's greedy tokens from mlx-lm with the adapter fused."""
    from mlx_lm import load

    from vllm_mlx_testing import fused_model, greedy_tokens

    base, tokenizer = load(str(tiny_qwen3))
    models = {None: base} | {name: fused_model(tiny_qwen3, path)[0] for name, path in adapters.items()}
    return {name: [greedy_tokens(model, tokenizer.encode(p), TOKENS) for p in PROMPTS]
            for name, model in models.items()}


def lora_config(adapters: dict[str, str], **config) -> dict:
    return {"loras": tuple(adapters.items()), "max_num_seqs": 16} | config


def test_each_adapter_alone_and_all_mixed_in_one_batch_give_mlx_lms_fused_output(tiny_qwen3, adapters, expected):
    """Greedy tokens equal mlx-lm's with the adapter fused, one request at a time and with the base and
    all three adapters (two prompts each) admitted together into one batch."""
    h = EngineHarness(tiny_qwen3, **lora_config(adapters, prefix_cache=False))
    try:
        for name in expected:
            for prompt, want in zip(PROMPTS, expected[name]):
                _, tokens, _ = h.wait(h.submit(prompt, max_tokens=TOKENS, temperature=0.0, ignore_eos=True,
                                               adapter=name))
                assert tokens == want, name
        requests = [(name, i, h.request(p, max_tokens=TOKENS, temperature=0.0, ignore_eos=True, adapter=name))
                    for name in expected for i, p in enumerate(PROMPTS)]
        h.engine.add_requests([r for _, _, r in requests])
        for name, i, r in requests:
            assert h.wait(r.request_id)[1] == expected[name][i], (name, i)
        stats = h.engine.stats.lora
        assert stats["resident"] and set(stats["adapters"]) == set(adapters)
    finally:
        h.engine.shutdown()


def test_adapters_beyond_the_slots_take_turns(tiny_qwen3, adapters, expected):
    """With one slot, the three adapters' requests (sent together) wait for it in turn and still give
    their own output; the least recently used adapter gives its slot up."""
    h = EngineHarness(tiny_qwen3, **lora_config(adapters, max_loras=1, prefix_cache=False))
    try:
        requests = [(name, h.request(PROMPTS[0], max_tokens=TOKENS, temperature=0.0, ignore_eos=True,
                                     adapter=name)) for name in ("alpha", "beta", None, "gamma", "alpha")]
        h.engine.add_requests([r for _, r in requests])
        for name, r in requests:
            assert h.wait(r.request_id)[1] == expected[name][0], name
        assert h.engine.stats.lora["loads"] >= 4  # alpha, beta, gamma, alpha again
    finally:
        h.engine.shutdown()


def test_cached_prefixes_stay_with_their_adapter(tiny_qwen3, adapters, expected):
    """The same prompt under one adapter, another, the base, then the first again: only the repeat reuses
    cached keys and values, and every answer is its adapter's."""
    h = EngineHarness(tiny_qwen3, **lora_config(adapters, prefix_block_size=4))
    try:
        cached = {}
        for step, name in enumerate(("alpha", "beta", None, "alpha")):
            _, tokens, last = h.wait(h.submit(PROMPTS[1], max_tokens=TOKENS, temperature=0.0, ignore_eos=True,
                                              adapter=name))
            assert tokens == expected[name][1], name
            cached[step] = last.cached_tokens
        assert cached[0] == cached[1] == cached[2] == 0
        assert cached[3] > 0
    finally:
        h.engine.shutdown()


@pytest.fixture(scope="module")
def lora_server(start_server, tiny_qwen3, adapters):
    return start_server(tiny_qwen3, "--served-model-name", "tiny", "--max-num-seqs", "16",
                        "--lora", *(f"{n}={p}" for n, p in adapters.items()))


def completion(server, model: str, prompt_ids: list[int], **extra) -> str:
    import openai

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    out = client.completions.create(model=model, prompt=prompt_ids, max_tokens=TOKENS, temperature=0,
                                    extra_body={"ignore_eos": True, **extra})
    return out.choices[0].text


def test_served_adapters_by_model_id_and_the_adapters_field(lora_server, tiny_qwen3, adapters, expected):
    """/v1/models lists tiny:NAME; NAME, tiny:NAME and mlx_lm.server's adapters field (name or folder) each
    select the adapter, concurrently with the others; unknown ones are 404s in OpenAI's shape."""
    import openai
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(tiny_qwen3)
    ids = tokenizer.encode(PROMPTS[0])
    client = openai.OpenAI(base_url=lora_server.base_url + "/v1", api_key="x")
    cards = {m.id: m for m in client.models.list().data}
    assert {"tiny", "tiny:alpha", "tiny:beta", "tiny:gamma"} <= set(cards)
    assert cards["tiny:beta"].model_extra["parent"] == "tiny"
    want = {name: tokenizer.decode(expected[name][0]) for name in expected}
    calls = [("tiny", {}, None), ("alpha", {}, "alpha"), ("tiny:beta", {}, "beta"),
             ("default", {"adapters": "gamma"}, "gamma"), ("tiny", {"adapters": adapters["beta"]}, "beta")]
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i, c=c: results.__setitem__(i, completion(lora_server, c[0], ids, **c[1])))
               for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (_, _, name) in enumerate(calls):
        assert results[i] == want[name], calls[i]
    for model, extra, param in (("tiny:delta", {}, "model"), ("tiny", {"adapters": "/nowhere"}, "adapters")):
        with pytest.raises(openai.NotFoundError) as err:
            completion(lora_server, model, ids, **extra)
        assert err.value.body["param"] == param and err.value.body["code"] == "model_not_found"


def test_chat_and_anthropic_with_an_adapter(lora_server, tiny_qwen3, adapters):
    """Chat completions and Anthropic Messages name the adapter as their model; both answer as the
    adapter does, which is not what the base model says."""
    import anthropic
    import httpx
    import openai

    client = openai.OpenAI(base_url=lora_server.base_url + "/v1", api_key="x")
    messages = [{"role": "user", "content": "Say something."}]

    def chat(model):
        out = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
        return out.choices[0].message.content

    assert chat("tiny:alpha") == chat("alpha") != chat("tiny")
    messages_api = anthropic.Anthropic(base_url=lora_server.base_url, api_key="x")
    reply = messages_api.messages.create(model="alpha", max_tokens=12, messages=messages,
                                         extra_body={"temperature": 0})
    assert reply.content[0].text == chat("alpha")
    health = lora_server.health()["engine"]["lora"]
    assert set(health["adapters"]) == set(adapters) and "alpha" in health["resident"]
    metrics = httpx.get(lora_server.base_url + "/metrics").text
    assert 'vllm_mlx_lora_adapter_resident{adapter="alpha"} 1.0' in metrics
    assert "vllm_mlx_lora_adapter_loads_total" in metrics


def test_an_adapter_for_another_base_or_format_does_not_start(tiny_qwen3, models_dir, tmp_path):
    from vllm_mlx_testing import build_tiny_model, make_lora_adapter

    other = build_tiny_model(models_dir / "lora-other-base", "qwen3", hidden_size=96, seed=5)
    foreign = make_lora_adapter(other, models_dir / "lora-foreign", seed=1)
    refused_at_start(tiny_qwen3, "--lora", f"foreign={foreign}", says="made for another base model")
    refused_at_start(tiny_qwen3, "--lora", f"missing={tmp_path}", says="is not an adapter folder")
    refused_at_start(tiny_qwen3, "--lora", "x:y=/tmp", says="no ':'")


def test_an_adapter_changed_on_disk_fails_its_requests_alone(tiny_qwen3, adapters, expected, tmp_path):
    """An adapter whose file changed since startup is not read into a slot (its cached prefixes were made
    with the old weights): its request fails saying so; the other adapter's requests go on."""
    import shutil

    from vllm_mlx.engine.request import FinishReason

    copies = {name: shutil.copytree(adapters[name], tmp_path / name) for name in ("alpha", "beta")}
    h = EngineHarness(tiny_qwen3, loras=tuple((n, str(p)) for n, p in copies.items()), max_loras=1)
    try:
        weights = copies["beta"] / "adapters.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
        bad = h.submit(PROMPTS[0], max_tokens=TOKENS, temperature=0.0, ignore_eos=True, adapter="beta")
        _, _, last = h.wait(bad)
        assert last.finish_reason is FinishReason.ERROR and "changed on disk" in last.error
        _, tokens, _ = h.wait(h.submit(PROMPTS[0], max_tokens=TOKENS, temperature=0.0, ignore_eos=True,
                                       adapter="alpha"))
        assert tokens == expected["alpha"][0]
    finally:
        h.engine.shutdown()


def test_lora_settings_from_flags_and_config_files(adapters, tmp_path):
    """--lora NAME=PATH, a config file's [lora] table or list, and what --print-config writes all give the same
    (name, absolute folder) pairs; --models and --distributed are refused."""
    from vllm_mlx.engine.lora_files import parse_lora_specs
    from vllm_mlx.options import OptionError, check_settings, DEFAULTS

    want = tuple((n, str(Path(p).resolve())) for n, p in adapters.items())
    assert parse_lora_specs([f"{n}={p}" for n, p in adapters.items()]) == want
    assert parse_lora_specs(dict(adapters)) == want
    assert parse_lora_specs([list(pair) for pair in want]) == want
    for changes, message in ((dict(models=["m=/m"]), "cannot be combined with --models"),
                             (dict(distributed=True), "cannot be combined with --distributed")):
        with pytest.raises(OptionError, match=message):
            check_settings(DEFAULTS.as_dict() | {"lora": [f"alpha={adapters['alpha']}"]} | changes)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapters(tiny_qwen3, adapters, expected, tmp_path, rslora):
    """The same adapters in PEFT's layout (adapter_model.safetensors, lora_A (r, in) / lora_B (out, r),
    lora_alpha / r or / sqrt(r)) give the same output as mlx-lm's, mixed with mlx-lm adapters in one batch;
    a DoRA adapter is refused."""
    import json

    from vllm_mlx.engine.lora_files import AdapterError, read_adapter
    from vllm_mlx_testing import peft_copy

    peft = {name: str(peft_copy(path, tmp_path / name, rslora=rslora)) for name, path in adapters.items()}
    h = EngineHarness(tiny_qwen3, loras=(("alpha", adapters["alpha"]), ("beta", peft["beta"]),
                                         ("gamma", peft["gamma"])), max_num_seqs=16, prefix_cache=False)
    try:
        requests = [(name, i, h.request(p, max_tokens=TOKENS, temperature=0.0, ignore_eos=True, adapter=name))
                    for name in ("alpha", "beta", "gamma", None) for i, p in enumerate(PROMPTS)]
        h.engine.add_requests([r for _, _, r in requests])
        for name, i, r in requests:
            assert h.wait(r.request_id)[1] == expected[name][i], (name, i)
    finally:
        h.engine.shutdown()
    config = Path(peft["beta"]) / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"use_dora": True}))
    with pytest.raises(AdapterError, match="use_dora"):
        read_adapter("beta", peft["beta"])


def test_strict_model_ids_include_the_adapters(start_server, tiny_qwen3, adapters):
    """With --strict-model-id, NAME and MODEL:NAME are served ids; other names still get 404."""
    import openai

    server = start_server(tiny_qwen3, "--served-model-name", "tiny", "--strict-model-id",
                          "--lora", f"alpha={adapters['alpha']}")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    for model in ("tiny", "alpha", "tiny:alpha"):
        client.completions.create(model=model, prompt="Hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="Hi", max_tokens=2)
