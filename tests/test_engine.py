"""The engine in-process on a tiny Qwen3: batching, chunked prefill, aborts, seeds."""

from __future__ import annotations

import threading
import time

import pytest

from vllm_mlx.engine.config import EngineConfig
from vllm_mlx.engine.engine import LLMEngine
from vllm_mlx.engine.request import FinishReason, GenerationRequest, SamplingParams
from vllm_mlx.models.loader import load_model


class EngineHarness:
    def __init__(self, path, load=None, **config):
        """``load``: what the engine thread loads (default: the text model at ``path``, in float32)."""
        self.outputs: dict[str, list] = {}
        self.cond = threading.Condition()
        self.engine = LLMEngine(load or (lambda: load_model(str(path), compute_dtype="float32")),
                                EngineConfig(**config), self._on)
        self.tokenizer = self.engine.start().tokenizer
        self._n = 0

    def _on(self, outputs):
        with self.cond:
            for o in outputs:
                self.outputs.setdefault(o.request_id, []).append(o)
            self.cond.notify_all()

    def request(self, prompt, **params) -> GenerationRequest:
        self._n += 1
        ids = prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt)
        return GenerationRequest(f"req-{self._n}", ids, SamplingParams(**params))

    def submit(self, prompt, **params) -> str:
        req = self.request(prompt, **params)
        self.engine.add_request(req)
        return req.request_id

    def wait(self, rid, timeout=60):
        with self.cond:
            ok = self.cond.wait_for(lambda: rid in self.outputs and self.outputs[rid][-1].finished, timeout)
        assert ok, f"{rid} did not finish"
        outs = self.outputs[rid]
        return "".join(o.text for o in outs), [t for o in outs for t in o.token_ids], outs[-1]

    def run(self, prompts, **params):
        rids = [self.submit(p, **params) for p in prompts]
        return [self.wait(r) for r in rids]


@pytest.fixture(scope="module")
def harness(tiny_qwen3):
    # no prefix cache: these tests are about batching and chunking, which a cache hit would bypass
    h = EngineHarness(tiny_qwen3, max_num_seqs=8, max_num_batched_tokens=64, prefix_cache=False)
    yield h
    h.engine.shutdown()


PROMPTS = ["Hello there", "A long story about the sea and the ships that sail on it", "x", "The capital of"]


def test_batched_greedy_equals_solo(harness):
    solo = [harness.run([p], max_tokens=20, temperature=0)[0] for p in PROMPTS]
    batched = harness.run(PROMPTS, max_tokens=20, temperature=0)
    assert [b[1] for b in batched] == [s[1] for s in solo]
    assert all(len(s[1]) == 20 for s in solo)


def test_seeded_sampling_reproduces_alone_and_batched(harness):
    params = dict(max_tokens=16, temperature=1.0, top_p=0.95, seed=42)
    alone = harness.run([PROMPTS[1]], **params)[0][1]
    noise = [harness.submit(p, max_tokens=16, temperature=1.0) for p in PROMPTS]
    batched = harness.run([PROMPTS[1]], **params)[0][1]
    for rid in noise:
        harness.wait(rid)
    assert alone == batched
    other_seed = harness.run([PROMPTS[1]], max_tokens=16, temperature=1.0, top_p=0.95, seed=43)[0][1]
    assert other_seed != alone


def test_chunked_prefill_matches_and_interleaves_with_decode(harness, tiny_qwen3):
    long_prompt = list(range(100, 400))  # 300 tokens with a 64-token step budget: 5+ chunks
    whole = EngineHarness(tiny_qwen3, max_num_batched_tokens=4096)
    try:
        expected = whole.run([long_prompt], max_tokens=8, temperature=0)[0][1]
    finally:
        whole.engine.shutdown()
    streaming = harness.submit("Keep talking", max_tokens=60, temperature=0, ignore_eos=True)
    time.sleep(0.05)
    steps_before = harness.engine.stats.steps
    got = harness.run([long_prompt], max_tokens=8, temperature=0)[0][1]
    harness.wait(streaming)
    assert got == expected
    assert harness.engine.stats.steps - steps_before >= 5


def test_abort_frees_the_row(harness):
    rid = harness.submit("Forever", max_tokens=5000, temperature=1.0, ignore_eos=True)
    deadline = time.monotonic() + 10
    while harness.engine.stats.running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    harness.engine.abort(rid)
    text, tokens, last = harness.wait(rid)
    assert last.finish_reason is FinishReason.ABORT
    deadline = time.monotonic() + 10
    while harness.engine.stats.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert harness.engine.stats.running == 0 and harness.engine.stats.batch_rows == 0


def test_empty_prompt_fails_alone(harness):
    bad = harness.submit([], max_tokens=4)
    good = harness.submit("fine", max_tokens=4, temperature=0)
    _, _, last = harness.wait(bad)
    assert last.finish_reason is FinishReason.ERROR and "no tokens" in last.error
    assert harness.wait(good)[2].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)


def test_prefill_together_matches_one_by_one(tiny_qwen3):
    """Left-padded batched prefill gives the same last logits as separate prefills."""
    import mlx.core as mx

    from vllm_mlx.engine.model_runner import group_for_padding
    from vllm_mlx.engine.numerics import logits_close
    from vllm_mlx.engine.model_runner import ModelRunner
    from vllm_mlx.engine.sequence import Sequence

    loaded = load_model(str(tiny_qwen3), compute_dtype="float32")
    runner = ModelRunner(loaded.model)
    assert runner.can_prefill_together
    prompts = [list(range(5, 5 + n)) for n in (7, 12, 9)]

    def seqs():
        return [Sequence(GenerationRequest(f"r{i}", p), set()) for i, p in enumerate(prompts)]

    _, together = runner.prefill_together(seqs())
    alone = mx.concatenate([runner.prefill(s, 100) for s in seqs()], axis=0)
    assert logits_close(together, alone)[0]  # tolerance by backend and dtype
    lengths = [[s.num_prompt_tokens for s in g] for g in group_for_padding(
        [Sequence(GenerationRequest(f"g{n}", list(range(n))), set()) for n in (3, 100, 4, 5, 90)])]
    assert lengths == [[3, 4, 5], [90, 100]]


def test_n_continuations_from_a_batched_prefill_group(harness):
    """n > 1 inside a group prefilled together: the shared cache is copied into n rows."""
    solo = harness.run(["Hello there friend"], max_tokens=10, temperature=0)[0][1]
    together_before = harness.engine.stats.prompts_prefilled_together
    requests = [harness.request("Hello there friend", max_tokens=10, temperature=0, n=3),
                harness.request("Hello there pal", max_tokens=10, temperature=0),
                harness.request("Hello there mate", max_tokens=10, temperature=0)]
    harness.engine.add_requests(requests)
    rids = [r.request_id for r in requests]
    rid = rids[0]
    with harness.cond:
        assert harness.cond.wait_for(
            lambda: sum(o.finished for o in harness.outputs.get(rid, [])) == 3, 60)
    per_index = {}
    for out in harness.outputs[rid]:
        per_index.setdefault(out.index, []).extend(out.token_ids)
    assert sorted(per_index) == [0, 1, 2]
    assert all(tokens == solo for tokens in per_index.values())
    for other in rids[1:]:
        harness.wait(other)
    assert harness.engine.stats.prompts_prefilled_together - together_before == 3


def test_thinking_budget_closes_reasoning(harness):
    """max_thinking_tokens: after the budget the engine writes the end-of-reasoning tag itself."""
    start, end = harness.tokenizer.think_start_tokens, harness.tokenizer.think_end_tokens
    req = harness.request("Think first", max_tokens=16, temperature=1.0, seed=1, ignore_eos=True,
                          max_thinking_tokens=5)
    req.reasoning_markers, req.starts_in_reasoning = (tuple(start), tuple(end)), True
    harness.engine.add_request(req)
    _, tokens, _ = harness.wait(req.request_id)
    assert tokens[5:5 + len(end)] == list(end)  # 5 reasoning tokens, then the closing tag
    assert list(end) not in [tokens[i:i + len(end)] for i in range(5)]
    assert len(tokens) == 16  # the model goes on answering after the tag
    unlimited = harness.request("Think first", max_tokens=16, temperature=1.0, seed=1, ignore_eos=True)
    unlimited.reasoning_markers, unlimited.starts_in_reasoning = (tuple(start), tuple(end)), True
    harness.engine.add_request(unlimited)
    assert harness.wait(unlimited.request_id)[1][:5] == tokens[:5]  # same draws before the budget hit
