"""Multi-token-prediction heads as the drafter (--speculative mtp): the head is built from the
checkpoint's mtp.* weights, drafts from the served model's hidden states, and the output stays the
model's."""

from __future__ import annotations

import itertools

import mlx.core as mx
import pytest

from test_engine import EngineHarness
from test_speculative import (PROMPTS, always_verifying, check_grammar_row, check_logprobs, check_prefix_cache_reuse,
                              check_rows_that_do_not_speculate)


@pytest.fixture(scope="module")
def mtp_models(models_dir):
    """A tiny Qwen3.5 with random MTP weights, and one whose head predicts exactly what it does."""
    from vllm_mlx_testing import add_mtp_head
    from vllm_mlx_testing.arch_models import build_arch_model

    random = add_mtp_head(build_arch_model(models_dir / "mtp-random", "qwen3_5"))
    exact = add_mtp_head(build_arch_model(models_dir / "mtp-exact", "qwen3_5"), exact=True)
    return random, exact


@pytest.fixture(scope="module")
def attending_mtp(models_dir):
    """A tiny Qwen3.5 whose MTP head proposes mostly the model's next tokens, nudged by what its layer
    attends to along the sequence: part of its proposals are accepted, and every one depends on the
    positions before."""
    from vllm_mlx_testing import add_mtp_head
    from vllm_mlx_testing.arch_models import build_arch_model

    return add_mtp_head(build_arch_model(models_dir / "mtp-attending", "qwen3_5"), exact=True, attending=0.3)


def head_reference(path):
    """The head's logits for K proposals after a sequence, computed afresh: the model over the whole
    sequence, the head's layer over every pair (hidden state at j, token j + 1) from position 0 in one
    forward, then its chain -- none of the engine's caches, batches or masks."""
    import numpy as np
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    import mlx.core as mx
    from vllm_mlx.engine.mtp_head import language_model, load_mtp_head, output_head
    from vllm_mlx.models.loader import load_model

    loaded = load_model(str(path), compute_dtype="float32")
    head = load_mtp_head(loaded.model, loaded.path, loaded.config)
    body = language_model(loaded.model).model
    output = output_head(loaded.model)

    def logits(tokens: list[int], k: int) -> list:
        t = mx.array(tokens)[None]
        hidden = body(t[:, :-1], cache=make_prompt_cache(loaded.model))
        cache, n = KVCache(), t.shape[1] - 1
        causal = mx.tril(mx.ones((n, n), dtype=mx.bool_))  # (an array: latent attention takes no "causal")
        h = head.norm(head.layers[0](head.project(hidden, body.embed_tokens(t[:, 1:])), mask=causal, cache=cache))
        out = []
        for _ in range(k):
            h = h[:, -1:]
            row = output(h)[0, -1]
            out.append(np.array(row))
            h = head(h, body.embed_tokens(mx.argmax(row).reshape(1, 1)), cache, None)
        return out

    return logits


def recording_proposals(harness) -> list:
    """(the row's tokens, its proposals, the head's logits for each) of every proposal the engine makes."""
    import numpy as np

    import mlx.core as mx

    proposer, calls, steps = harness.engine.core.speculator.proposer, [], []
    propose, output = proposer.propose, proposer.output

    def recording_output(hidden):
        logits = output(hidden)
        steps.append(np.array(logits[:, -1].astype(mx.float32)))
        return logits

    def recording(seqs, wants):
        steps.clear()
        out = propose(seqs, wants)
        rows = [(s, p) for s, p in zip(seqs, out) if p]
        calls.extend((s.prompt_ids + s.output_ids, p, [steps[j][r] for j in range(len(p))])
                     for r, (s, p) in enumerate(rows))
        return out

    proposer.propose, proposer.output = recording, recording_output
    return calls


def test_the_head_attends_along_the_whole_sequence(attending_mtp, monkeypatch, tmp_path):
    """Every proposal the engine makes is what the head makes of the row's whole sequence computed
    afresh (:func:`head_reference`), through 16-token prefill chunks, rows joining a batch, rejected
    proposals cut off after the next ones are made, seeded sampled rows, runs of plain steps whose
    pairs are written later (rows joining, finishing and aborted meanwhile), a conversation cached
    amid plain steps and continued, and a prefix read back from the disk tier by a restarted engine."""
    import numpy as np

    import vllm_mlx.engine.speculative as speculative

    monkeypatch.setattr(speculative, "REST_STEPS", 0)  # rows keep proposing after rejections
    config = dict(max_num_seqs=8, max_num_batched_tokens=16, speculative="mtp", num_speculative_tokens=3,
                  kv_cache_dir=str(tmp_path / "blocks"))
    on = EngineHarness(attending_mtp, **config)
    calls = recording_proposals(on)
    try:
        with always_verifying(on):
            firsts = on.run(PROMPTS[:4], max_tokens=12, temperature=0)
        # runs of plain steps (their pairs written together later) between verify steps: up to 20 in a
        # row, more than a run's deferred steps, with rows finishing and joining meanwhile
        kinds = itertools.cycle([0] * 20 + [3] + [0] * 5 + [3, 3])
        on.engine.core.speculator.rates.forced = lambda rows: next(kinds)
        rids = [on.submit(p, max_tokens=n, temperature=0.8, seed=3) for p, n in zip(PROMPTS[:4], (50, 23, 37, 9))]
        aborted = on.submit(PROMPTS[4], max_tokens=500, temperature=0)
        on.wait(rids[3])
        on.engine.abort(aborted)  # a row leaves without being cached
        outs = [on.wait(r) for r in rids]
        assert on.wait(aborted)[2].finish_reason.value == "abort"
        # a conversation that finishes amid plain steps (cached with its deferred keys), then its next turn
        on.engine.core.speculator.rates.forced = lambda rows: 0
        prompt = on.tokenizer.encode(PROMPTS[1]) + outs[1][1]
        answer = on.run([prompt], max_tokens=23, temperature=0)[0][1]
        on.engine.core.speculator.rates.forced = None
        follow = prompt + answer + on.tokenizer.encode(" and then")
        hits = on.engine.stats.prefix_cache["hit_tokens"]
        with always_verifying(on):
            on.run([follow, PROMPTS[2]], max_tokens=30, temperature=0)
        assert on.engine.stats.prefix_cache["hit_tokens"] - hits >= len(follow) - 8
        stats = on.engine.stats.speculative
    finally:
        on.engine.shutdown()
    again = EngineHarness(attending_mtp, **config)  # the blocks and checkpoints come back from the disk tier
    restored = recording_proposals(again)
    try:
        with always_verifying(again):
            again.run([follow + on.tokenizer.encode(" more")], max_tokens=8, temperature=0)
        assert again.engine.stats.prefix_cache["hit_tokens"] > len(follow) // 2
    finally:
        again.engine.shutdown()
    assert 0 < stats["accepted"] < stats["proposed"], stats  # partly accepted: rejected positions were cut
    assert len(calls) > 20 and restored
    reference = head_reference(attending_mtp)
    for tokens, proposals, logits in calls + restored:
        want = reference(tokens, len(proposals))
        assert proposals == [int(np.argmax(w)) for w in want]
        assert max(float(np.abs(a - b).max()) for a, b in zip(logits, want)) < 1e-4, (len(tokens), proposals)


@pytest.mark.parametrize("which", ["random", "exact"])
def test_greedy_output_is_the_models_with_an_mtp_head(mtp_models, which):
    model = mtp_models[0 if which == "random" else 1]
    off = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="mtp")
    try:
        on.engine.core.speculator.rates.forced = lambda rows: 4  # verify every step
        for max_tokens in (40, 7):
            want = [off.run([p], max_tokens=max_tokens, temperature=0)[0][1] for p in PROMPTS]
            assert [on.run([p], max_tokens=max_tokens, temperature=0)[0][1] for p in PROMPTS] == want
            assert [r[1] for r in on.run(PROMPTS, max_tokens=max_tokens, temperature=0)] == want
        stats = on.engine.stats.speculative
        assert stats["method"] == "mtp" and stats["verify_steps"] > 20
        if which == "exact":  # the head's proposals are the model's next tokens: every one is accepted
            assert stats["accepted"] == stats["proposed"] > 100
        else:
            assert stats["proposed"] > stats["accepted"]
        if not mx.metal.is_available():  # the Gated DeltaNets and the head kept each position's state
            assert stats["rollback_forwards"] == 0, stats
        outs = on.run([PROMPTS[4]] * 3, max_tokens=30, temperature=0.7, top_p=0.9, ignore_eos=True)  # sampled too
        assert all(len(o[1]) == 30 for o in outs)
    finally:
        off.engine.shutdown()
        on.engine.shutdown()


@pytest.mark.parametrize("moe", [False, True])
def test_a_published_layout_head_is_read_as_published(models_dir, moe):
    """A checkpoint as published (Hugging Face convolution order, zero-centred norms, a
    mixture-of-experts head's experts one tensor each): its exact head still proposes the model's
    every next token, so its norms got their 1 back and its experts were stacked in order."""
    from vllm_mlx_testing import add_mtp_head
    from vllm_mlx_testing.arch_models import build_arch_model

    experts = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                   shared_expert_intermediate_size=32) if moe else None
    model = add_mtp_head(build_arch_model(models_dir / f"mtp-published-{moe}", "qwen3_5", overrides=experts),
                         exact=True, hf_layout=True)
    on = EngineHarness(model, max_num_seqs=8, max_num_batched_tokens=64, speculative="mtp")
    try:
        on.engine.core.speculator.rates.forced = lambda rows: 4
        on.run(PROMPTS[:3], max_tokens=30, temperature=0)
        stats = on.engine.stats.speculative
        assert stats["accepted"] == stats["proposed"] > 30
    finally:
        on.engine.shutdown()


def test_a_checkpoint_without_mtp_weights_is_refused(tiny_qwen3, models_dir):
    from vllm_mlx.engine.mtp_head import load_mtp_head
    from vllm_mlx.models.loader import load_model
    from vllm_mlx_testing.arch_models import build_arch_model

    plain = build_arch_model(models_dir / "mtp-none", "qwen3_5")
    loaded = load_model(str(plain), compute_dtype="float32")
    with pytest.raises(ValueError, match="has no MTP weights"):
        load_mtp_head(loaded.model, loaded.path, loaded.config)
    with pytest.raises(Exception, match="has no MTP weights"):
        EngineHarness(tiny_qwen3, speculative="mtp")


def test_logprobs_n_sampled_and_grammar_rows_and_the_prefix_cache_with_an_mtp_head(mtp_models):
    """The composition rows of docs/speculative.md with the head's own proposals (not a stand-in): a
    stop token inside accepted proposals, logprobs, n = 2, seeded sampled rows, penalties, a grammar
    row -- each request's tokens are the engine's without speculation -- and a drafted conversation
    cached and reused by the next turn."""
    off = EngineHarness(mtp_models[1], max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(mtp_models[1], max_num_seqs=8, max_num_batched_tokens=64, speculative="mtp")
    try:
        check_rows_that_do_not_speculate(off, on)
        check_logprobs(off, on)
        before = on.engine.stats.speculative["proposed"]
        with always_verifying(on):  # sampled rows (this model may end early: ignore_eos) verify proposals,
            outs = on.run([PROMPTS[4]] * 4, max_tokens=30, temperature=0.3, top_p=0.95, ignore_eos=True)
        assert all(len(o[1]) == 30 and o[2].finish_reason.value == "length" for o in outs)
        assert on.engine.stats.speculative["proposed"] > before  # (its nearly flat draws seldom take one)
        check_prefix_cache_reuse(off, on)
        check_grammar_row(off, on)
    finally:
        off.engine.shutdown()
        on.engine.shutdown()


def test_served_with_the_seed_flag(start_server, mtp_models):
    """`--enable-mtp` (the earlier vllm-mlx's flag) serves with the MTP head: a request that speculates
    answers what the same request without speculation does."""
    import openai

    server = start_server(mtp_models[1], "--served-model-name", "q35", "--enable-mtp", "--mtp-num-draft-tokens", "3")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
    texts = [client.completions.create(model="q35", prompt="Tell me a story about the sea.", max_tokens=48,
                                       temperature=0, extra_body={"speculative": flag}).choices[0].text
             for flag in (False, True)]
    assert texts[0] == texts[1] and texts[0]
    stats = server.health()["engine"]["speculative"]
    assert stats["method"] == "mtp" and stats["accepted"] > 0


@pytest.mark.parametrize("arch", ["glm4_moe", "glm4_moe_lite", "mimo"])
def test_a_head_published_as_a_layer_outside_the_models_drafts(models_dir, arch, monkeypatch):
    """Checkpoints that publish their MTP head as one decoder layer outside the model's: as DeepSeek-V3
    does, after the model's (``eh_proj``, ``enorm``, ``hnorm``, ``shared_head``, experts one tensor
    each, a latent attention's ``kv_b_proj`` whole) -- in GLM-4.5's grouped-query attention and
    GLM-4.7-Flash's (DeepSeek-V3's) latent attention -- and as MiMo does (``model.mtp_layers.0``,
    its projection taking the hidden state first): an exact head's every proposal is accepted and the greedy
    output is the model's, alone and batched; a head that attends along the sequence proposes, through
    prefill chunks, batches, rejections and a cached conversation continued, what it makes of each
    row's whole sequence computed afresh."""
    import numpy as np

    import vllm_mlx.engine.speculative as speculative
    from vllm_mlx_testing import add_mtp_head
    from vllm_mlx_testing.arch_models import build_arch_model

    exact = add_mtp_head(build_arch_model(models_dir / f"mtp-exact-{arch}", arch), exact=True)
    attending = add_mtp_head(build_arch_model(models_dir / f"mtp-attending-{arch}", arch), exact=True, attending=0.3)
    off = EngineHarness(exact, max_num_seqs=8, max_num_batched_tokens=16, speculative="off")
    on = EngineHarness(exact, max_num_seqs=8, max_num_batched_tokens=16, speculative="mtp")
    try:
        want = [off.run([p], max_tokens=24, temperature=0)[0][1] for p in PROMPTS]
        with always_verifying(on):
            assert [on.run([p], max_tokens=24, temperature=0)[0][1] for p in PROMPTS[:2]] == want[:2]
            assert [r[1] for r in on.run(PROMPTS, max_tokens=24, temperature=0)] == want
        stats = on.engine.stats.speculative
        assert stats["accepted"] == stats["proposed"] > 50
    finally:
        off.engine.shutdown()
        on.engine.shutdown()
    monkeypatch.setattr(speculative, "REST_STEPS", 0)  # rows keep proposing after rejections
    on = EngineHarness(attending, max_num_seqs=8, max_num_batched_tokens=16, speculative="mtp",
                       num_speculative_tokens=3)
    calls = recording_proposals(on)
    try:
        with always_verifying(on):
            firsts = on.run(PROMPTS[:4], max_tokens=12, temperature=0)
            follow = on.tokenizer.encode(PROMPTS[1]) + firsts[1][1] + on.tokenizer.encode(" and then")
            hits = on.engine.stats.prefix_cache["hit_tokens"]
            on.run([follow, PROMPTS[2]], max_tokens=12, temperature=0)
        assert on.engine.stats.prefix_cache["hit_tokens"] - hits >= len(follow) - 8
        stats = on.engine.stats.speculative
    finally:
        on.engine.shutdown()
    assert 0 < stats["accepted"] < stats["proposed"], stats
    reference = head_reference(attending)
    assert len(calls) > 10
    for tokens, proposals, logits in calls:
        want = reference(tokens, len(proposals))
        assert proposals == [int(np.argmax(w)) for w in want]
        assert max(float(np.abs(a - b).max()) for a, b in zip(logits, want)) < 1e-4, (len(tokens), proposals)
