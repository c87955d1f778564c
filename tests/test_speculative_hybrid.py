"""Speculation on models whose caches cannot simply drop positions: recurrent layers (Qwen3.5/3.6 and
Qwen3-Next's Gated DeltaNets, LFM2's short convolutions, Nemotron-H's and Falcon-H1's Mamba mixers) keep
each verified position's state and take the kept one, or are rolled back through a snapshot of their
state and a forward over the kept positions (engine/rollback.py: Metal, --distributed); sliding-window layers (Gemma 3/4, gpt-oss) are cut right after the step, their ring
in temporal order (model_runner.drop_row_tails). The output stays the output without speculation."""

from __future__ import annotations

import mlx.core as mx
import pytest

from test_engine import EngineHarness
from test_speculative import PROMPTS, ReferenceProposer


@pytest.mark.parametrize("arch", ["qwen3_5", "qwen3_next", "lfm2", "nemotron_h", "falcon_h1", "gemma3_text",
                                  "gpt_oss", "gemma4_text"])
def test_rejected_proposals_leave_recurrent_and_sliding_window_layers_as_without_them(arch, models_dir, monkeypatch):
    from vllm_mlx.engine.decode_cache import DecodeKVCache
    from vllm_mlx_testing.arch_models import build_arch_model

    holes = []  # the attention layers (Falcon-H1's in its layers' CacheLists too) keep rejected positions as holes
    drop = DecodeKVCache.drop_in_place
    monkeypatch.setattr(DecodeKVCache, "drop_in_place", lambda self, *a: (holes.append(self), drop(self, *a))[1])

    model = build_arch_model(models_dir / f"spec-{arch}", arch)
    off = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="ngram")
    try:
        want = [off.run([p], max_tokens=40, temperature=0)[0][1] for p in PROMPTS]
        speculator = on.engine.core.speculator
        speculator.proposer = ReferenceProposer({tuple(on.tokenizer.encode(p)): w for p, w in zip(PROMPTS, want)})
        speculator.rates.forced = lambda rows: 4  # verify every step: this test is about the repair after it
        assert [on.run([p], max_tokens=40, temperature=0)[0][1] for p in PROMPTS] == want
        # together: rows join the batch while others verify (prompts are prefilled 64 tokens a step)
        assert [r[1] for r in on.run(PROMPTS, max_tokens=40, temperature=0)] == want
        stats = on.engine.stats.speculative
        assert stats["proposed"] > stats["accepted"] > 0 and stats["verify_steps"] > 20 and holes
        # recurrent layers keep each verified position's state: no second forward (models/position_states.py;
        # on Metal only the short convolutions do)
        if arch == "lfm2" or arch in ("qwen3_5", "qwen3_next", "nemotron_h", "falcon_h1") and not mx.metal.is_available():
            assert stats["rollback_forwards"] == 0, stats
        # a row that ends in a verify step (its proposals run to max_tokens) is cached up to its last
        # token, which that step does not feed; a later turn restores it and still matches
        prompt = on.tokenizer.encode("Tell me about the rivers of the north")
        answer = off.run([prompt], max_tokens=41, temperature=0)[0][1]
        speculator.proposer.answers[tuple(prompt)] = answer
        speculator.proposer.wrong_every = 0  # 1 + 8 * 5 tokens: the row ends inside accepted proposals
        assert on.run([prompt], max_tokens=41, temperature=0)[0][1] == answer
        follow = prompt + answer + on.tokenizer.encode(" and then")
        hits = on.engine.stats.prefix_cache["hit_tokens"]
        assert on.run([follow], max_tokens=20, temperature=0)[0][1] == off.run([follow], max_tokens=20,
                                                                               temperature=0)[0][1]
        assert on.engine.stats.prefix_cache["hit_tokens"] - hits == len(prompt) + len(answer) - 1
    finally:
        off.engine.shutdown()
        on.engine.shutdown()


def test_recurrent_layers_that_ignore_row_lengths_are_refused(models_dir):
    """mlx-lm's Nemotron-H Mamba layer stops its convolution at ``cache.lengths`` but not its state: as
    loaded it is refused; the engine swaps it for one that stops there (models/row_lengths.py), which
    passes. Falcon-H1's per-layer ``CacheList`` (Mamba state, keys and values) is taken apart."""
    from vllm_mlx.engine.drafters import speculation_unsupported
    from vllm_mlx.models.loader import load_model
    from vllm_mlx.models.row_lengths import honour_row_lengths
    from vllm_mlx_testing.arch_models import build_arch_model

    nemotron = load_model(str(build_arch_model(models_dir / "spec-nemotron_h", "nemotron_h")),
                          compute_dtype="float32").model
    assert "do not stop at a row's length" in speculation_unsupported(nemotron, deterministic=False)
    assert honour_row_lengths(nemotron) == 1 and speculation_unsupported(nemotron, deterministic=False) is None
    falcon = load_model(str(build_arch_model(models_dir / "spec-falcon_h1", "falcon_h1")), compute_dtype="float32").model
    assert speculation_unsupported(falcon, deterministic=False) is None
    qwen35 = load_model(str(build_arch_model(models_dir / "spec-qwen3_5", "qwen3_5")), compute_dtype="float32").model
    assert speculation_unsupported(qwen35, deterministic=False) is None


@pytest.mark.parametrize("draft", ["attention", "itself", "recurrent", "falcon itself"])
def test_a_draft_model_for_a_model_with_recurrent_layers(draft, models_dir):
    """A Qwen3.5 drafted for by a plain-attention model with its tokenizer, by itself (every proposal
    accepted) and by a smaller random Qwen3.5 (recurrent layers in the draft too), and a Falcon-H1 by
    itself (a CacheList per layer in the draft too): the served model's recurrent layers are rolled
    back after each rejection, the draft's after each proposal."""
    import shutil

    from vllm_mlx_testing import build_tiny_model
    from vllm_mlx_testing.arch_models import build_arch_model

    model = build_arch_model(models_dir / "spec-qwen3_5", "qwen3_5")
    if draft == "falcon itself":
        model = path = build_arch_model(models_dir / "spec-falcon_h1", "falcon_h1")
    elif draft == "attention":
        path = build_tiny_model(models_dir / "spec-qwen3_5-draft", "qwen3", vocab_size=1024, num_hidden_layers=1)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(model / name, path / name)
    elif draft == "itself":
        path = model
    else:
        path = build_arch_model(models_dir / "spec-qwen3_5-small", "qwen3_5", seed=5, num_hidden_layers=2)
    drafted_like_without(model, path, tokens=30, every_one_taken=draft.endswith("itself"), least=40)


def drafted_like_without(model, draft, tokens: int, every_one_taken: bool, least: int) -> None:
    """Greedy output with ``draft`` drafting (a verify step every step) is the output without, alone
    and batched; ``every_one_taken``: every proposal is accepted (more than ``least`` of them), else some
    are rejected."""
    off = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="draft", draft_model=str(draft))
    try:
        on.engine.core.speculator.rates.forced = lambda rows: 4  # verify every step
        want = [off.run([p], max_tokens=tokens, temperature=0)[0][1] for p in PROMPTS]
        assert [r[1] for r in on.run(PROMPTS, max_tokens=tokens, temperature=0)] == want
        assert [on.run([p], max_tokens=tokens, temperature=0)[0][1] for p in PROMPTS[:2]] == want[:2]
        stats = on.engine.stats.speculative
        assert stats["method"] == "draft" and stats["verify_steps"] > 1
        if every_one_taken:
            assert stats["accepted"] == stats["proposed"] > least
        else:
            assert stats["proposed"] > stats["accepted"]
    finally:
        off.engine.shutdown()
        on.engine.shutdown()


@pytest.mark.parametrize("arch, draft", [("gemma3_text", "itself"), ("gpt_oss", "itself"),
                                         ("gemma3_text", "smaller"), ("gemma4_text", "itself")])
def test_a_draft_model_with_sliding_window_layers(arch, draft, models_dir):
    """A draft whose layers keep a ring of the last 16 positions (Gemma 3/4, gpt-oss): its one-token
    proposal steps rotate the ring over positions it needs again when proposals are rejected, so it goes
    back to the ring as it was before the row's newest token (as its recurrent layers go back to their
    state). Drafting for itself, every proposal is accepted (a ring left rotated would not be); a
    smaller random Gemma 3 proposes what the target then rejects. The output is the output without."""
    from vllm_mlx_testing.arch_models import build_arch_model

    model = build_arch_model(models_dir / f"spec-{arch}", arch)
    path = model if draft == "itself" else build_arch_model(models_dir / f"spec-{arch}-small", arch, seed=5,
                                                             num_hidden_layers=2)
    drafted_like_without(model, path, tokens=40, every_one_taken=draft == "itself", least=100)


def test_served_lfm2_speculates_with_its_output_unchanged(start_server, models_dir):
    """The tiny LFM2 (short-convolution layers) falls into repeating stretches, which prompt lookup
    predicts: a request that speculates answers what the same request without speculation does."""
    import openai
    from vllm_mlx_testing.arch_models import build_arch_model

    model = build_arch_model(models_dir / "spec-lfm2", "lfm2")
    server = start_server(model, "--served-model-name", "lfm2", "--speculative", "ngram")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    messages = [{"role": "user", "content": "count: one two three one two three"}]
    texts = [client.chat.completions.create(model="lfm2", messages=messages, max_tokens=64, temperature=0,
                                            extra_body={"speculative": flag}).choices[0].message.content
             for flag in (False, True)]
    assert texts[0] == texts[1] and texts[0]
    stats = server.health()["engine"]["speculative"]
    assert stats["verify_steps"] > 0 and stats["accepted"] > 0


def test_served_gpt_oss_drafts_for_itself_over_http(start_server, models_dir):
    """gpt-oss (sliding-window and full layers, Harmony) served with itself as --draft-model: concurrent
    chat requests, each asked with and without speculation, answer alike, every proposal accepted."""
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from vllm_mlx_testing.arch_models import build_arch_model

    model = build_arch_model(models_dir / "spec-gpt_oss", "gpt_oss")
    server = start_server(model, "--served-model-name", "oss", "--draft-model", str(model))
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)

    def ask(args):
        content, speculative = args
        out = client.chat.completions.create(model="oss", messages=[{"role": "user", "content": content}],
                                             max_tokens=48, temperature=0,
                                             extra_body={"ignore_eos": True, "speculative": speculative})
        return out.choices[0].message.content

    questions = ["A long story about the sea and the ships that sail on it", "count: one two three", "x"]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, [(q, flag) for flag in (True, False) for q in questions]))
    assert got[:3] == got[3:] and all(got)
    stats = server.health()["engine"]["speculative"]
    assert stats["method"] == "draft" and stats["accepted"] == stats["proposed"] > 0, stats


def test_a_row_ended_by_its_consumer_during_a_verify_step_is_not_cached_past_its_tokens(models_dir):
    """A stop string ends a row from outside the engine, between steps, while its verify step is in
    flight: its recurrent state is then past its tokens, so the completion must not be cached under
    them (a later turn would restore a wrong state). The next turn's output stays the model's."""
    from vllm_mlx_testing.arch_models import build_arch_model

    model = build_arch_model(models_dir / "spec-qwen3_5", "qwen3_5")
    off = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="ngram")
    try:
        prompt = on.tokenizer.encode(PROMPTS[1])
        want = off.run([prompt], max_tokens=40, temperature=0)[0][1]
        speculator = on.engine.core.speculator
        speculator.proposer = ReferenceProposer({tuple(prompt): want})
        speculator.proposer.wrong_every = 0
        speculator.rates.forced = lambda rows: 2  # verify every step, two proposals at a time
        rid = on.submit(prompt, max_tokens=40, temperature=0)
        with on.cond:  # the consumer ends the row once it has 12 tokens (as a stop string would)
            assert on.cond.wait_for(lambda: sum(len(o.token_ids) for o in on.outputs.get(rid, [])) >= 12, 30)
        on.engine.finish_row(rid, 0)
        on.wait(rid)
        got = [t for o in on.outputs[rid] for t in o.token_ids]
        assert got == want[:len(got)] and len(got) < 40
        follow = prompt + got + on.tokenizer.encode(" and then")
        assert on.run([follow], max_tokens=20, temperature=0)[0][1] == off.run([follow], max_tokens=20,
                                                                               temperature=0)[0][1]
    finally:
        off.engine.shutdown()
        on.engine.shutdown()


@pytest.mark.parametrize("arch", ["qwen3_5", "qwen3_next", "lfm2", "nemotron_h", "falcon_h1"])
def test_recurrent_layers_keep_the_state_after_each_verified_position(arch, models_dir):
    """A verify forward's Gated DeltaNets, short convolutions and Mamba mixers keep every position's state; each row takes the one after its
    last kept position, and has what a forward over its kept tokens alone leaves (rows of different
    lengths, left-padded, keeping 1 to all 5 positions)."""
    from mlx_lm.models.cache import make_prompt_cache
    from vllm_mlx_testing.arch_models import build_arch_model

    from vllm_mlx.engine.cache_layout import leaf_caches
    from vllm_mlx.engine.model_runner import recurrent_layers
    from vllm_mlx.engine.rollback import keep_positions, take_kept
    from vllm_mlx.models.position_states import keep_position_states
    from vllm_mlx.models.loader import load_model

    if mx.metal.is_available() and arch != "lfm2":
        pytest.skip("on Metal only the short convolutions keep their states (models/position_states.py)")
    model = load_model(str(build_arch_model(models_dir / f"spec-{arch}", arch)), compute_dtype="float32").model
    assert keep_position_states(model) > 0
    prompts, step = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]], [[21, 22, 23, 24, 25]] * 3
    kept = [1, 3, 5]

    def batch_after(prompt_rows):  # the rows' caches merged after their prompts, left-padded
        caches = []
        for row in prompt_rows:
            cache = make_prompt_cache(model)
            model(mx.array([row]), cache=cache)
            caches.append(cache)
        return [layer[0].merge(list(layer)) for layer in zip(*caches)]

    verified = batch_after(prompts)
    layers = recurrent_layers(verified)
    keep_positions(verified, layers, True)
    model(mx.array(step), cache=verified)
    keep_positions(verified, layers, False)
    assert take_kept(verified, layers, mx.array(kept))
    for row, (prompt, n) in enumerate(zip(prompts, kept)):
        alone = make_prompt_cache(model)
        model(mx.array([prompt + step[row][:n]]), cache=alone)
        for i in layers:
            for got, want in zip(leaf_caches(verified)[i].cache, leaf_caches(alone)[i].cache):
                assert got.shape[1:] == want.shape[1:]
                assert mx.allclose(got[row], want[0], atol=1e-5, rtol=1e-4).item(), (arch, row, i)
    # without keep_positions the layers run as mlx-lm's, and a layer that kept nothing is said so
    assert not take_kept(verified, layers, mx.array(kept))
