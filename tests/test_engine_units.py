"""Units of the engine: stop-string matching, the reasoning budget and the batched sampler with known logits."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from vllm_mlx.engine.reasoning_budget import ReasoningBudget
from vllm_mlx.engine.request import SamplingParams
from vllm_mlx.engine.sampler import BatchSamplingParams, PenaltyState, make_rng_key, process_logits, sample
from vllm_mlx.engine.stop import StopStringMatcher


def test_stop_matcher_finds_earliest_and_holds_back_prefixes():
    m = StopStringMatcher(("END", "stop here"))
    assert m.find("abc") is None
    assert m.find("abc END xyz stop here") == 4
    assert m.safe_length("hello E") == len("hello ")
    assert m.safe_length("hello EN") == len("hello ")
    assert m.safe_length("hello stop h") == len("hello ")
    assert m.safe_length("hello") == 5
    # only search from near the last checked position
    assert m.find("xxEND", start=4) == 2
    assert StopStringMatcher(()).safe_length("anything") == len("anything")


def _feed(budget: ReasoningBudget, output: list[int], tokens: list[int]) -> list[int | None]:
    """Feed tokens one by one; returns the forced token before each (None: the model chose)."""
    forced = []
    for tok in tokens:
        forced.append(budget.next_forced)
        output.append(tok)
        budget.on_token(tok, output)
    return forced


def test_reasoning_budget_forces_the_end_marker_then_lets_the_model_answer():
    START, END = (90,), (91, 92)
    budget = ReasoningBudget(3, (START, END), starts_in_reasoning=True)
    out: list[int] = []
    assert _feed(budget, out, [1, 2, 3, 91, 92, 4]) == [None, None, None, 91, 92, None]
    assert not budget.in_reasoning and budget.reasoning_tokens == 5
    assert _feed(budget, out, [90, 5]) == [None, None] and budget.in_reasoning  # reopened: budget already spent
    assert budget.next_forced == 91


def test_reasoning_budget_is_closed_by_the_model_or_opened_by_the_start_marker():
    START, END = (90,), (91,)
    closed = ReasoningBudget(10, (START, END), starts_in_reasoning=True)
    assert _feed(closed, [], [1, 91, 2]) == [None, None, None] and not closed.in_reasoning
    opened = ReasoningBudget(1, (START, END), starts_in_reasoning=False)
    assert _feed(opened, [], [7, 90, 8, 91]) == [None, None, None, 91] and not opened.in_reasoning
    assert ReasoningBudget(0, (START, END), starts_in_reasoning=True).next_forced == 91  # no reasoning at all


def _params(*ps: SamplingParams, vocab: int = 4, stop_ids=None) -> BatchSamplingParams:
    return BatchSamplingParams.from_params(list(ps), vocab, stop_ids)


def _keys(*seeds: int) -> mx.array:
    return mx.stack([make_rng_key(s) for s in seeds])


def test_greedy_rows_take_argmax():
    logits = mx.array([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    g = SamplingParams(temperature=0)
    assert sample(logits, _params(g, g, vocab=3), _keys(0, 1)).tokens.tolist() == [1, 0]


def test_top_k_one_is_argmax_even_at_high_temperature():
    logits = mx.random.normal((4, 100), key=mx.random.key(0))
    p = SamplingParams(temperature=2.0, top_k=1)
    tokens = sample(logits, _params(*[p] * 4, vocab=100), _keys(0, 1, 2, 3)).tokens
    assert tokens.tolist() == mx.argmax(logits, axis=-1).tolist()


def tokens_drawn(probs: list[float], params: SamplingParams, draws: int = 200) -> set[int]:
    """The set of tokens one row draws over many steps of its own key stream."""
    logits = mx.log(mx.array([probs]))
    key, seen = make_rng_key(1)[None], set()
    for _ in range(draws):
        result = sample(logits, _params(params, vocab=len(probs)), key)
        key = result.keys
        seen.add(result.tokens.item())
    return seen


def test_top_p_keeps_only_the_nucleus():
    # top_p=0.7 keeps the first two tokens only (0.5 + 0.3 covers it)
    assert tokens_drawn([0.5, 0.3, 0.15, 0.05], SamplingParams(temperature=1.0, top_p=0.7)) == {0, 1}


def test_min_p_drops_unlikely_tokens():
    # min_p=0.2 keeps tokens with p >= 0.2 * 0.6 = 0.12
    assert tokens_drawn([0.6, 0.3, 0.05, 0.05], SamplingParams(temperature=1.0, min_p=0.2)) == {0, 1}


def test_top_k_two_keeps_two():
    assert tokens_drawn([0.4, 0.3, 0.2, 0.1], SamplingParams(temperature=1.0, top_k=2)) == {0, 1}


def test_sampling_follows_the_distribution():
    probs = [0.7, 0.2, 0.1]
    logits = mx.log(mx.array([probs] * 2000))
    tokens = sample(logits, _params(*[SamplingParams(temperature=1.0)] * 2000, vocab=3), _keys(*range(2000))).tokens
    counts = [tokens.tolist().count(i) / 2000 for i in range(3)]
    assert counts == pytest.approx(probs, abs=0.04)


def test_seeded_row_is_independent_of_its_batch_neighbours():
    logits = mx.random.normal((3, 50), key=mx.random.key(5))
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone = sample(logits[1:2], _params(seeded, vocab=50), _keys(1234)).tokens
    other = SamplingParams(temperature=0.8, top_k=5)
    batched = sample(logits, _params(other, seeded, SamplingParams(temperature=0), vocab=50), _keys(7, 1234, 9))
    assert batched.tokens.tolist()[1] == alone.item()


# -- penalties, bias and min_tokens on known logits ------------------------------------


def _state(prompt: list[int], generated: list[int], vocab: int = 4) -> PenaltyState:
    state = PenaltyState.for_prompts([prompt], vocab)
    for t in generated:
        state.add_tokens(mx.array([t]))
    return state


def test_presence_and_frequency_follow_openai_semantics():
    logits = mx.array([[1.0, 2.0, 3.0, 4.0]])
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    # token 1 generated twice, token 3 once; token 0 only in the prompt (not penalised)
    out = process_logits(logits, _params(p), _state([0], [1, 1, 3]), None)
    expected = [1.0, 2.0 - 0.5 - 2 * 0.25, 3.0, 4.0 - 0.5 - 1 * 0.25]
    assert out.tolist()[0] == pytest.approx(expected)


def test_repetition_penalty_is_multiplicative_over_prompt_and_output():
    logits = mx.array([[2.0, -2.0, 2.0, -2.0]])
    p = SamplingParams(repetition_penalty=2.0)
    out = process_logits(logits, _params(p), _state([0, 1], [2]), None)
    # seen tokens 0, 1 (prompt) and 2 (output): positive logits halved, negative doubled
    assert out.tolist()[0] == pytest.approx([1.0, -4.0, 1.0, -2.0])


def test_penalties_apply_per_row():
    logits = mx.array([[1.0, 1.0, 1.0, 1.0]] * 2)
    penalised, plain = SamplingParams(presence_penalty=1.0), SamplingParams()
    state = PenaltyState.for_prompts([[], []], 4)
    state.add_tokens(mx.array([2, 2]))
    out = process_logits(logits, _params(penalised, plain), state, None).tolist()
    assert out[0] == pytest.approx([1.0, 1.0, 0.0, 1.0]) and out[1] == pytest.approx([1.0] * 4)


def test_logit_bias_and_min_tokens():
    logits = mx.array([[0.0, 0.0, 0.0, 5.0]])
    p = SamplingParams(logit_bias=((1, 3.0), (2, -100.0)), min_tokens=2, temperature=0)
    params = _params(p, stop_ids=[{3}])
    out = process_logits(logits, params, None, [1]).tolist()[0]
    assert out[:3] == pytest.approx([0.0, 3.0, -100.0]) and out[3] == -math.inf
    assert process_logits(logits, params, None, [2]).tolist()[0][3] == 5.0  # min_tokens reached
    assert sample(logits, params, _keys(0), None, [0]).tokens.item() == 1


def test_logprobs_are_consistent_with_the_sampled_tokens():
    logits = mx.log(mx.array([[0.5, 0.25, 0.125, 0.125]]))
    p = SamplingParams(temperature=1.0, logprobs=True, top_logprobs=2)
    result = sample(logits, _params(p), _keys(3))
    tok = result.tokens.item()
    assert result.logprobs.item() == pytest.approx(math.log([0.5, 0.25, 0.125, 0.125][tok]), abs=1e-5)
    assert result.top_ids.tolist()[0][:2] == [0, 1]
    assert result.top_logprobs.tolist()[0][:2] == pytest.approx([math.log(0.5), math.log(0.25)], abs=1e-5)


def test_a_sampled_batch_without_logprobs_computes_none_and_draws_the_same_tokens():
    """The normalizer over the vocabulary is computed only when some row reports logprobs; the draw
    does not depend on it."""
    logits = mx.random.normal((3, 64), key=mx.random.key(1))
    plain = SamplingParams(temperature=0.8, top_p=0.9)
    reported = SamplingParams(temperature=0.8, top_p=0.9, logprobs=True)
    keys = mx.stack([make_rng_key(i) for i in range(3)])
    without = sample(logits, BatchSamplingParams.from_params([plain] * 3, 64), keys)
    with_lp = sample(logits, BatchSamplingParams.from_params([plain, reported, plain], 64), keys)
    assert without.logprobs is None and with_lp.logprobs is not None
    assert without.tokens.tolist() == with_lp.tokens.tolist()


def test_the_scheduler_makes_every_status_change():
    from vllm_mlx.engine.request import GenerationRequest
    from vllm_mlx.engine.scheduler import Scheduler
    from vllm_mlx.engine.sequence import Sequence, SequenceStatus

    admitted = []
    sched = Scheduler(max_num_seqs=2, max_num_batched_tokens=100, on_admit=admitted.append)
    seqs = [Sequence(GenerationRequest(f"r{i}", [1, 2, 3], SamplingParams(n=2)), set()) for i in range(3)]
    for seq in seqs:
        sched.add(seq)
    plan = sched.schedule()
    assert admitted == seqs[:2] and [s for s, _ in plan.prefill] == seqs[:2] and list(sched.waiting) == seqs[2:]
    assert [s.status for s in seqs] == [SequenceStatus.PREFILLING] * 2 + [SequenceStatus.WAITING]
    parent, child = seqs[0], Sequence(seqs[0].request, set(), index=1)
    parent.num_computed = 3
    sched.fork(parent, [child], ["key"])
    assert child.status is SequenceStatus.PREFILLING and (child.num_computed, child.rng_key) == (3, "key")
    for seq in (parent, child):
        sched.mark_running(seq)
    assert sched.running == [parent, child] and sched.prefilling == [seqs[1]]
    sched.finish(child)
    assert child.status is SequenceStatus.FINISHED and sched.running == [parent]
    sched.remove_request("r1")
    assert sched.find_all("r1") == [] and sched.all_sequences() == [parent, seqs[2]]


class _SilentEngine:
    """An engine stand-in that takes requests and dies without ending them (what a thread killed by a
    BaseException in a kernel would leave): only AsyncEngine's own watch can end the waits."""

    def __init__(self, load, config, on_outputs):
        self.alive = True
        self.aborted: list[str] = []

    def start(self) -> None:
        pass

    def add_request(self, request) -> None:
        pass

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        pass


def test_a_request_waiting_on_a_dead_engine_gets_an_error_delta(monkeypatch):
    import asyncio

    from vllm_mlx.engine import async_engine
    from vllm_mlx.engine.config import EngineConfig
    from vllm_mlx.engine.request import FinishReason, GenerationRequest

    monkeypatch.setattr(async_engine, "ENGINE_CHECK_S", 0.05)

    async def run():
        engine = async_engine.AsyncEngine(None, EngineConfig(), engine_factory=_SilentEngine)
        engine._text_stream = lambda request: _PassThrough()
        engine.start(asyncio.get_running_loop())
        stream = engine.generate(GenerationRequest("r1", [1, 2, 3], SamplingParams(max_tokens=4)))
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.2)
        assert not first.done()  # alive: the request waits
        engine.engine.alive = False
        out = await asyncio.wait_for(first, 2)
        engine.shutdown()
        return out, engine

    out, engine = asyncio.run(run())
    assert out.finish_reason is FinishReason.ERROR and "engine stopped" in out.error
    assert engine.in_flight == 0


class _PassThrough:
    done = False

    def feed(self, out):
        return out


def test_a_one_row_batch_decodes_without_a_mask_and_gives_the_same_logits():
    from mlx_lm.models import qwen3
    from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

    from vllm_mlx.engine.decode_cache import DecodeKVCache, as_decode_caches

    mx.random.seed(0)
    args = qwen3.ModelArgs(model_type="qwen3", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=97,
                           max_position_embeddings=256, rope_theta=10000.0, head_dim=16, tie_word_embeddings=True)
    model = qwen3.Model(args)
    prompts = [[5, 9, 13, 2, 7, 11], [3, 4]]

    def prefilled(prompt):
        cache = make_prompt_cache(model)
        model(mx.array([prompt]), cache=cache)
        return cache

    alone = prefilled(prompts[0])
    expected = model(mx.array([[21]]), cache=alone)[:, -1]

    batch = as_decode_caches([KVCache.merge([c]) for c in prefilled(prompts[0])])
    assert all(type(c) is DecodeKVCache for c in batch) and batch[0].make_mask(1) is None
    got = model(mx.array([[21]]), cache=batch)[:, -1]
    assert mx.allclose(got, expected, atol=1e-5).item()

    two = as_decode_caches([KVCache.merge([a, b]) for a, b in zip(prefilled(prompts[0]), prefilled(prompts[1]))])
    assert isinstance(two[0].make_mask(1), mx.array)  # the shorter row's padding is masked
    assert type(BatchKVCache([0])) is BatchKVCache  # mlx-lm's class itself is untouched
