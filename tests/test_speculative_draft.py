"""Draft-model speculative decoding (--draft-model): the draft's proposals, and the engine's and the
server's output unchanged by it."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from test_engine import EngineHarness
from test_speculative import (PROMPTS, always_verifying, check_grammar_row, check_logprobs, check_prefix_cache_reuse,
                              check_rows_that_do_not_speculate, check_sampled_rows, check_served_like_plain,
                              refused_at_start)
from vllm_mlx.engine import draft as draft_module
from vllm_mlx.engine.draft import DraftProposer, check_vocabulary
from vllm_mlx.engine.cache_layout import leaf_caches
from vllm_mlx.models.loader import load_model


@pytest.fixture(scope="module")
def small_draft(models_dir):
    """Another random model with the tests' tokenizer: one layer, its own weights (accepts some)."""
    from vllm_mlx_testing import build_tiny_model

    return build_tiny_model(models_dir / "draft-qwen3", "qwen3", num_hidden_layers=1, seed=3)


class Row:
    """What the proposer reads of a sequence: its prompt and output token ids."""

    def __init__(self, prompt: list[int], output: list[int]):
        self.prompt_ids, self.output_ids = prompt, output


def greedy(model, tokens: list[int], k: int, vocab: int = 1024) -> list[int]:
    """The draft alone: ``k`` greedy tokens (of the first ``vocab``) after ``tokens``."""
    cache = make_prompt_cache(model)
    logits = model(mx.array(tokens)[None], cache=cache)[:, -1]
    out = []
    for _ in range(k):
        out.append(int(mx.argmax(logits[:, :vocab], axis=-1).item()))
        logits = model(mx.array([[out[-1]]]), cache=cache)[:, -1]
    return out


@pytest.mark.parametrize("kind", ["attention", "recurrent"])
def test_the_drafts_proposals_are_its_greedy_continuation(kind, small_draft, models_dir, monkeypatch):
    """Rows of very different lengths, a prompt prefilled over several steps, rows behind by more tokens
    than one forward reads, a row leaving: each row's proposals are what the draft alone would say --
    for a plain-attention draft and for one with recurrent layers (a tiny Qwen3.5)."""
    from vllm_mlx_testing.arch_models import build_arch_model

    monkeypatch.setattr(draft_module, "INGEST_TOKENS", 96)  # so the long prompt takes several steps
    path = small_draft if kind == "attention" else build_arch_model(models_dir / "spec-qwen3_5", "qwen3_5")
    model = load_model(str(path), compute_dtype="float32").model
    proposer = DraftProposer(model, vocab_limit=1024)
    assert bool(proposer.recurrent) == (kind == "recurrent")
    rows = [Row(list(range(40, 70)), [7]), Row([(i * 37) % 900 + 10 for i in range(300)], [9]), Row([5], [6])]
    wants = [3, 3, 2]
    first = proposer.propose(rows, wants)
    assert first[0] == greedy(model, rows[0].prompt_ids + rows[0].output_ids, 3)
    assert first[1] == []  # its prompt is still being prefilled: no proposals meanwhile
    steps = 1
    while True:
        for row in rows:
            row.output_ids.append(len(row.output_ids) + 100)  # each step emits at least a token per row
        got = proposer.propose(rows, wants)
        steps += 1
        assert got[0] == greedy(model, rows[0].prompt_ids + rows[0].output_ids, 3)
        if got[1]:
            break
        assert proposer.prompt_work
    assert steps >= 3
    assert got == [greedy(model, r.prompt_ids + r.output_ids, w) for r, w in zip(rows, wants)]
    for lag in ([2, 1, 20], [1, 30, 1]):  # tokens emitted since: accepted proposals, or steps without the draft
        for row, n in zip(rows, lag):
            row.output_ids += [(len(row.output_ids) * 13 + j) % 1000 + 3 for j in range(n)]
        got = proposer.propose(rows, wants)
        assert got == [greedy(model, r.prompt_ids + r.output_ids, w) for r, w in zip(rows, wants)]
    check_holes_not_moves(proposer, rows, wants, model, monkeypatch)
    proposer.forget([rows[1]])
    rows[0].output_ids.append(11)
    rows[2].output_ids.append(12)
    assert proposer.propose([rows[0], rows[2]], [4, 1]) == [greedy(model, r.prompt_ids + r.output_ids, w)
                                                           for r, w in ((rows[0], 4), (rows[2], 1))]


def check_holes_not_moves(proposer, rows, wants, model, monkeypatch):
    """Rows gaining different numbers of tokens per step (each accepts its own number of proposals): the
    draft's attention caches keep what a row's shorter feed left as holes instead of moving the row's
    whole cache each step, squeeze them out now and then, and the proposals stay the draft's greedy ones."""
    from vllm_mlx.engine.decode_cache import DecodeKVCache

    compactions = []
    compact = DecodeKVCache.compact
    monkeypatch.setattr(DecodeKVCache, "compact", lambda self: (compactions.append(self), compact(self))[1])
    attention = [c for i, c in enumerate(leaf_caches(proposer.cache)) if i not in proposer.recurrent]
    assert attention and all(isinstance(c, DecodeKVCache) for c in attention)
    padding = [c.left_padding.tolist() for c in attention]
    holes = 0
    for step in range(40):
        for i, row in enumerate(rows):
            row.output_ids += [(step * 7 + i * 5 + j) % 900 + 3 for j in range((step + i) % 4 + 1)]
        got = proposer.propose(rows, wants)
        assert got == [greedy(model, r.prompt_ids + r.output_ids, w) for r, w in zip(rows, wants)]
        holes = max(holes, max(attention[0].hole_counts or [0]))
        if not compactions:
            assert [c.left_padding.tolist() for c in attention] == padding  # no row was moved
    assert holes > 0 and compactions


def test_a_draft_with_another_vocabulary_is_refused(models_dir, tiny_qwen3):
    from vllm_mlx_testing import build_tiny_model

    llama = load_model(str(build_tiny_model(models_dir / "draft-llama", "llama")), compute_dtype="float32")
    qwen = load_model(str(tiny_qwen3), compute_dtype="float32")
    with pytest.raises(ValueError, match="has another vocabulary than the served model"):
        check_vocabulary(qwen.tokenizer, llama.tokenizer, "draft-llama")
    check_vocabulary(qwen.tokenizer, qwen.tokenizer, "tiny-qwen3")


@pytest.fixture(scope="module")
def engines(tiny_qwen3, small_draft):
    off = EngineHarness(tiny_qwen3, max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    itself = EngineHarness(tiny_qwen3, max_num_seqs=8, max_num_batched_tokens=64, speculative="draft",
                           draft_model=str(tiny_qwen3))
    small = EngineHarness(tiny_qwen3, max_num_seqs=8, max_num_batched_tokens=64, speculative="draft",
                          draft_model=str(small_draft))
    yield off, itself, small
    for harness in (off, itself, small):
        harness.engine.shutdown()


def test_greedy_output_is_the_same_with_a_draft_alone_and_batched(engines):
    off, *drafted = engines
    for on in drafted:
        for max_tokens in (60, 7):  # 7: the length ends a row inside a run of accepted proposals
            solo = [off.run([p], max_tokens=max_tokens, temperature=0)[0][1] for p in PROMPTS]
            assert [on.run([p], max_tokens=max_tokens, temperature=0)[0][1] for p in PROMPTS] == solo
            assert [r[1] for r in on.run(PROMPTS, max_tokens=max_tokens, temperature=0)] == solo
        stats = on.engine.stats.speculative
        assert stats["method"] == "draft" and stats["accepted"] > 0
    assert drafted[0].engine.stats.speculative["acceptance_rate"] == 1.0  # the model drafting for itself


def test_logprobs_n_and_sampled_rows_with_a_draft(engines):
    off, _, on = engines
    check_logprobs(off, on)
    two = on.run([PROMPTS[0]], max_tokens=20, temperature=0, n=2)[0]
    assert len(two[1]) == 40  # both continuations, 20 tokens each
    check_sampled_rows(on)


def test_stop_tokens_and_rows_that_do_not_speculate_with_a_draft(engines):
    off, _, on = engines
    check_rows_that_do_not_speculate(off, on)


def test_a_grammar_row_with_a_draft(engines):
    off, itself, _ = engines
    check_grammar_row(off, itself)


def test_the_prefix_cache_reuses_a_conversation_drafted_for(engines):
    off, on, _ = engines
    check_prefix_cache_reuse(off, on)


def test_served_with_a_draft_model(start_server, tiny_qwen3, models_dir, plain_qwen3_server):
    from vllm_mlx_testing import first_layers_model

    early_exit = first_layers_model(tiny_qwen3, models_dir / "tiny-qwen3-first-layer", 1)
    drafted = start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--draft-model", early_exit)
    check_served_like_plain(drafted, plain_qwen3_server, "draft")


def test_a_draft_with_another_vocabulary_does_not_start(models_dir, tiny_qwen3):
    from vllm_mlx_testing import build_tiny_model

    llama = build_tiny_model(models_dir / "draft-llama-serve", "llama")
    refused_at_start(tiny_qwen3, "--draft-model", llama, says="has another vocabulary than the served model")


def test_memory_admission_counts_the_drafts_keys_and_values(engines):
    off, itself, small = engines
    assert itself.engine.kv_bytes_per_token == 2 * off.engine.kv_bytes_per_token  # the same model twice
    assert off.engine.kv_bytes_per_token < small.engine.kv_bytes_per_token < itself.engine.kv_bytes_per_token


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_5"])  # the draft's prefix cache in blocks, and in checkpoints
def test_the_draft_starts_the_next_turn_from_its_own_prefix_cache(arch, tiny_qwen3, models_dir):
    """A finished conversation's draft keys (a recurrent draft's state too) are cached: the next turn's
    draft starts from them instead of prefilling the conversation again, and a model drafting for
    itself from the restored cache still has every proposal accepted; the output is the model's."""
    from vllm_mlx_testing.arch_models import build_arch_model

    model = tiny_qwen3 if arch == "qwen3" else build_arch_model(models_dir / "draft-cache-qwen3_5", "qwen3_5")
    off = EngineHarness(model, max_num_seqs=4, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(model, max_num_seqs=4, max_num_batched_tokens=64, speculative="draft",
                       draft_model=str(model), prefix_block_size=16)
    try:
        with always_verifying(on):
            prompt = on.tokenizer.encode(PROMPTS[1] * 4)
            first = on.run([prompt], max_tokens=40, temperature=0)[0][1]
            follow = prompt + first + on.tokenizer.encode(" and then")
            before = on.engine.stats.speculative
            again = on.run([follow], max_tokens=30, temperature=0)[0][1]
            after = on.engine.stats.speculative
        assert after["draft_cached_tokens"] - before["draft_cached_tokens"] >= len(prompt) + len(first) - 16
        assert after["accepted"] - before["accepted"] == after["proposed"] - before["proposed"] > 10
        assert again == off.run([follow], max_tokens=30, temperature=0)[0][1]
    finally:
        off.engine.shutdown()
        on.engine.shutdown()
