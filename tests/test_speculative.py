"""Speculative decoding (--speculative ngram, --draft-model): proposals, the batch cache's repair, and
the engine's and the server's output unchanged by it."""

from __future__ import annotations

import contextlib

import pytest

from test_engine import EngineHarness
from vllm_mlx.engine.config import EngineConfig
from vllm_mlx.engine.drafters import chosen_method, speculation_unsupported
from vllm_mlx.engine.ngram import NgramIndex

PROMPTS = ["Hello there " * 6, "A long story about the sea and the ships that sail on it", "x", "The capital of",
           "one two three four one two three four one two"]


def test_proposals_continue_the_latest_earlier_occurrence():
    for index in (NgramIndex([]), NgramIndex([1, 2, 3, 4, 5])):  # tokens generated, or partly the prompt
        index.extend([1, 2, 3, 4, 5, 9, 9, 1, 2, 3][len(index.tokens):])
        assert index.propose(3) == [4, 5, 9]  # (1, 2, 3) occurred before, followed by 4 5 9
        index.extend([7])
        assert index.propose(3) == []  # (2, 3, 7), (3, 7) never occurred before
    loop = NgramIndex([])
    loop.extend([5, 6, 5, 6, 5, 6])
    assert loop.propose(5) == [5, 6, 5, 6, 5]  # a repeating stretch continues with its period


def test_a_long_prompt_is_indexed_a_stretch_at_a_time_from_its_end():
    from vllm_mlx.engine.ngram import BACKFILL, PROMPT_WINDOW

    filler = [10 + i % 7919 for i in range(PROMPT_WINDOW + 4 * BACKFILL)]  # no 2-gram repeats in a window
    early, late = [1, 2, 3, 4, 5], [6, 7, 8, 9, 5]
    prompt = early + filler[:-3 * BACKFILL] + late + filler[-3 * BACKFILL:]
    index = NgramIndex(prompt)
    index.extend([6, 7, 8])
    found = [index.propose(2) for _ in range(4)]  # each proposal indexes one more stretch, newest first
    assert found[0] == [] and found[-1] == [9, 5]
    index.extend([1, 2, 3])
    assert index.propose(2) == []  # beyond the window: never indexed
    assert len(index._ends) <= 3 * (PROMPT_WINDOW + 8)


def test_models_whose_caches_cannot_drop_positions_are_refused(models_dir):
    from vllm_mlx.models.loader import load_model
    from vllm_mlx_testing.arch_models import build_arch_model

    model = load_model(str(build_arch_model(models_dir / "spec-falcon", "falcon_h1")), compute_dtype="float32").model
    assert speculation_unsupported(model, deterministic=False) is None  # its CacheList taken apart
    gemma = load_model(str(build_arch_model(models_dir / "spec-gemma3", "gemma3_text")), compute_dtype="float32").model
    assert speculation_unsupported(gemma, deterministic=False) is None  # sliding windows: cut after a step
    from mlx_lm.models.cache import QuantizedKVCache

    gemma.make_cache = lambda: [QuantizedKVCache() for _ in gemma.layers]  # keys and values kept quantized
    assert "QuantizedKVCache" in speculation_unsupported(gemma, deterministic=False)
    # the default, --speculative auto: prompt lookup where the caches allow it, else off (not an error)
    assert EngineConfig().speculative == "auto"
    assert [chosen_method(EngineConfig(), m) for m in (model, gemma)] == ["ngram", "off"]
    assert chosen_method(EngineConfig(deterministic=True), model) == "off"
    assert chosen_method(EngineConfig(draft_model="/a/draft"), model) == "draft"
    assert chosen_method(EngineConfig(speculative="mtp"), gemma) == "mtp"  # asked by name: refused at start


class ReferenceProposer:
    """Proposes a row's reference continuation (its greedy output without speculation), with every
    third proposal run's last token wrong: proposals accepted whole, in part, and not at all."""

    method = "reference"

    def __init__(self, answers: dict[tuple[int, ...], list[int]]):
        self.answers = answers
        self.runs = 0
        self.wrong_every = 3  # 0: never wrong

    def propose(self, seqs, wants):
        out = []
        for seq, k in zip(seqs, wants):
            done = len(seq.output_ids)
            run = list(self.answers.get(tuple(seq.prompt_ids), [])[done:done + k])
            self.runs += bool(run)
            if run and self.wrong_every and self.runs % self.wrong_every == 0:
                run[-1] = (run[-1] + 1) % 1000
            out.append(run)
        return out

    def may_propose(self, seqs, wants):
        return any(wants)

    def forget(self, seqs):
        pass


@pytest.fixture(scope="module")
def engines(tiny_qwen3):
    off = EngineHarness(tiny_qwen3, max_num_seqs=8, max_num_batched_tokens=64, speculative="off")
    on = EngineHarness(tiny_qwen3, max_num_seqs=8, max_num_batched_tokens=64, speculative="ngram")
    yield off, on
    off.engine.shutdown()
    on.engine.shutdown()


def test_greedy_output_is_the_same_with_speculation_alone_and_batched(engines):
    off, on = engines
    before = on.engine.stats.speculative["accepted"]
    for max_tokens in (60, 7):  # 7: the length ends a row inside a run of accepted proposals
        solo = [off.run([p], max_tokens=max_tokens, temperature=0)[0][1] for p in PROMPTS]
        assert [on.run([p], max_tokens=max_tokens, temperature=0)[0][1] for p in PROMPTS] == solo
        assert [r[1] for r in on.run(PROMPTS, max_tokens=max_tokens, temperature=0)] == solo
    stats = on.engine.stats.speculative
    assert stats["accepted"] > before and 0 < stats["acceptance_rate"] <= 1


class ShiftedProposer:
    """Proposes a row's reference continuation, every token of it wrong (shifted by one) before output
    position ``right_from`` -- and from there on, with ``right_from`` None, never right."""

    method = "shifted"

    def __init__(self, answer: list[int], right_from: int | None):
        self.answer, self.right_from = answer, right_from

    def propose(self, seqs, wants):
        out = []
        for seq, k in zip(seqs, wants):
            done = len(seq.output_ids)
            run = list(self.answer[done:done + k])
            right = self.right_from is not None and done >= self.right_from
            out.append(run if right else [(t + 1) % 500 for t in run])
        return out

    def may_propose(self, seqs, wants):
        return any(wants)

    def forget(self, seqs):
        pass


def test_a_lone_row_proposes_again_after_resting_and_rests_longer_while_nothing_is_accepted(engines):
    """A row whose proposals are rejected whole twice rests for engine steps of any kind -- so a row
    alone, whose steps are all plain while it rests, proposes again (its proposals right from then on
    are accepted: output as without speculation) -- and each rest with nothing accepted since lasts
    twice as long: a row never right verifies a few times in 300 tokens, not every twentieth step."""
    off, on = engines
    prompt = on.tokenizer.encode("Tell me a story about the sea")
    answer = off.run([prompt], max_tokens=300, temperature=0, ignore_eos=True)[0][1]
    speculator = on.engine.core.speculator
    saved = speculator.proposer
    try:
        for right_from, tokens in ((10, 120), (None, 300)):
            speculator.proposer = ShiftedProposer(answer, right_from)
            before = dict(on.engine.stats.speculative)
            with always_verifying(on):
                out = on.run([prompt], max_tokens=tokens, temperature=0, ignore_eos=True)[0][1]
            assert out == answer[:tokens]
            stats = {k: on.engine.stats.speculative[k] - before[k] for k in ("verify_steps", "accepted")}
            if right_from is not None:
                assert stats["accepted"] > 60, stats  # (it used to rest for good after its first two misses)
            else:
                assert stats["accepted"] == 0 and 6 <= stats["verify_steps"] <= 14, stats  # rests 16, 32, 64, 128
    finally:
        speculator.proposer = saved


def test_the_scripted_model_reads_a_rows_history_without_its_holes(scripted_qwen3):
    """The scripted test model (whose keys are the tokens it has seen) leaves out the positions the
    decode batch dropped in place: rows batched together, one proposing its reply and one proposing
    wrong tokens (rejected, so it drops more than the other: holes), both answer the scripted reply;
    and it scripts every position of a verify step of a raw completion prompt, not only the last."""
    from vllm_mlx.models.loader import load_model

    harness = EngineHarness(scripted_qwen3, lambda: load_model(str(scripted_qwen3), trust_remote_code=True),
                            max_num_seqs=4, speculative="ngram")
    try:
        prompts = [harness.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
                   for p in ("Say something.", "Say something else.")]  # (the model scripts its turn only)
        want = [harness.run([p], max_tokens=40, temperature=0)[0][1] for p in prompts]
        speculator = harness.engine.core.speculator
        right, wrong = ShiftedProposer(want[0], 0), ShiftedProposer(want[1], None)
        speculator.proposer = type("Both", (), {
            "method": "both", "may_propose": staticmethod(lambda seqs, wants: any(wants)),
            "forget": staticmethod(lambda seqs: None),
            "propose": staticmethod(lambda seqs, wants: [
                (right if s.prompt_ids == prompts[0] else wrong).propose([s], [k])[0] for s, k in zip(seqs, wants)]),
        })()
        with always_verifying(harness):
            got = [r[1] for r in harness.run(prompts, max_tokens=40, temperature=0)]
            raw = harness.tokenizer.encode("Say it raw.")  # a raw completion prompt (proposals all wrong):
            assert harness.run([raw], max_tokens=40, temperature=0)[0][1] == want[0]  # the default reply too
        assert got == want
        assert harness.engine.stats.speculative["accepted"] > 5  # (the right row, in runs of its proposals)
    finally:
        harness.engine.shutdown()


def test_stop_tokens_and_rows_that_do_not_speculate_share_the_steps(engines):
    check_rows_that_do_not_speculate(*engines)


def check_rows_that_do_not_speculate(off, on):
    """A stop token inside accepted proposals, logprobs, n = 2, seeded sampled rows and penalties: each
    request's tokens are those of the engine without speculation, next to a speculating row."""
    reference = off.run([PROMPTS[0]], max_tokens=40, temperature=0)[0][1]
    stop = reference[12]  # a token the model repeats: the row stops at its first occurrence
    mixed = [dict(temperature=0, stop_token_ids=[stop]), dict(temperature=0, logprobs=True, top_logprobs=2),
             dict(temperature=0, n=2), dict(temperature=0.3, seed=5), dict(temperature=0.9, seed=5,
                                                                             repetition_penalty=1.2)]
    def by_continuation(harness, rid, n):  # each continuation's tokens (the harness interleaves deltas)
        with harness.cond:
            assert harness.cond.wait_for(lambda: sum(o.finished for o in harness.outputs.get(rid, [])) == n, 60)
        outs = harness.outputs[rid]
        return [[t for o in outs if o.index == i for t in o.token_ids] for i in sorted({o.index for o in outs})]

    for params in mixed:  # all share the steps with a greedy row
        n = params.get("n", 1)
        want = by_continuation(off, off.submit(PROMPTS[0], max_tokens=40, **params), n)
        rids = [on.submit(PROMPTS[0], max_tokens=40, **params), on.submit(PROMPTS[4], max_tokens=40, temperature=0)]
        assert by_continuation(on, rids[0], n) == want, params
        on.wait(rids[1])
        assert on.outputs[rids[0]][-1].finish_reason == off.outputs[list(off.outputs)[-1]][-1].finish_reason
    stopped = off.run([PROMPTS[0]], max_tokens=40, temperature=0, stop_token_ids=[stop])[0][1]
    assert stop not in stopped and len(stopped) < 40


def test_speculated_tokens_report_the_models_logprobs(engines):
    check_logprobs(*engines)


def check_logprobs(off, on):
    """A speculating row's logprobs and top logprobs are the model's, at each position."""
    before = on.engine.stats.speculative["accepted"]
    runs = []
    for harness in (off, on):
        with always_verifying(on):
            rid = harness.submit(PROMPTS[4], max_tokens=30, temperature=0, logprobs=True, top_logprobs=3)
            harness.wait(rid)
        runs.append([lp for o in harness.outputs[rid] for lp in o.logprobs])
    assert on.engine.stats.speculative["accepted"] > before
    want, got = runs
    assert [lp.token_id for lp in got] == [lp.token_id for lp in want] and len(got) == 30
    for a, b in zip(got, want):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top] and len(a.top) == 3
        assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=1e-4)


@contextlib.contextmanager
def always_verifying(harness):
    """Every step with proposals verifies (whatever this machine measures of verify steps meanwhile)."""
    rates = harness.engine.core.speculator.rates
    rates.forced = lambda rows: harness.engine.core.speculator.num_tokens
    try:
        yield
    finally:
        rates.forced = None


@contextlib.contextmanager
def proposing(harness, prompts: list, answers: list):
    """The harness's speculator proposes each prompt's answer (a ReferenceProposer) and verifies every
    step, meanwhile."""
    speculator = harness.engine.core.speculator
    tok = harness.tokenizer
    saved = speculator.proposer
    speculator.proposer = ReferenceProposer({tuple(p if isinstance(p, list) else tok.encode(p)): a
                                             for p, a in zip(prompts, answers)})
    try:
        with always_verifying(harness):
            yield speculator.proposer
    finally:
        speculator.proposer = saved


def test_sampled_rows_speculate_and_end_where_they_should(engines):
    check_sampled_rows(engines[1])


def check_sampled_rows(on):
    before = on.engine.stats.speculative["accepted"]
    with always_verifying(on):
        outs = on.run([PROMPTS[4]] * 4, max_tokens=30, temperature=0.3, top_p=0.95)
    assert all(len(o[1]) == 30 and o[2].finish_reason.value == "length" for o in outs)
    assert on.engine.stats.speculative["accepted"] > before


def test_the_prefix_cache_reuses_a_speculated_conversation(engines):
    check_prefix_cache_reuse(*engines)


def check_grammar_row(off, on):
    """A grammar row with the proposer's own proposals gives the tokens it gives without speculation,
    and takes some of them."""
    from vllm_mlx.engine.constraints import GrammarCompiler, StructuredSpec

    tok = on.tokenizer
    compiler = GrammarCompiler(tok, on.engine.core.vocab_size, sorted(tok.eos_token_ids))
    before = on.engine.stats.speculative["accepted"]
    runs = []
    for harness in (off, on):
        with always_verifying(on):  # (whatever this machine measures of verify steps meanwhile)
            req = harness.request(PROMPTS[1], max_tokens=30, temperature=0)
            req.constraint = compiler.matcher(StructuredSpec(regex=r"[a-z ]{1,80}"))
            harness.engine.add_request(req)
            runs.append(harness.wait(req.request_id)[1])
    assert runs[0] == runs[1] and runs[0]
    assert on.engine.stats.speculative["accepted"] > before


def check_prefix_cache_reuse(off, on):
    """A speculated completion is cached, and the next turn reuses it with the model's output."""
    first = on.run([PROMPTS[1]], max_tokens=30, temperature=0)[0][1]
    follow = on.tokenizer.encode(PROMPTS[1]) + first + on.tokenizer.encode(" and then")
    hits = on.engine.stats.prefix_cache["hit_tokens"]
    again = on.run([follow], max_tokens=30, temperature=0)[0]
    assert on.engine.stats.prefix_cache["hit_tokens"] > hits  # the completion's keys were cached
    assert again[1] == off.run([follow], max_tokens=30, temperature=0)[0][1]


@pytest.fixture(scope="module")
def speculating_server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--speculative", "ngram",
                        "--num-speculative-tokens", "3")


def test_served_output_and_stats(speculating_server, plain_qwen3_server, qwen3_server):
    check_served_like_plain(speculating_server, plain_qwen3_server, "ngram")
    check_served_like_plain(qwen3_server, plain_qwen3_server, "ngram")  # the default: --speculative auto
    import httpx

    assert httpx.get(plain_qwen3_server.base_url + "/v1/capabilities").json()["features"]["speculative_decoding"] == "off"


def check_served_like_plain(server, plain, method: str) -> None:
    """A streamed greedy chat answers as on the server without speculation; /health and /metrics
    report ``method``'s proposals."""
    import httpx
    import openai

    messages = [{"role": "user", "content": "repeat after me: " + "the cat sat on the mat. " * 4}]
    texts = []
    for each in (plain, server):
        client = openai.OpenAI(base_url=each.base_url + "/v1", api_key="x")
        stream = client.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=48,
                                                temperature=0, stream=True)
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert texts[0] == texts[1] and texts[0]
    stats = server.health()["engine"]["speculative"]
    assert stats["method"] == method and stats["proposed"] >= stats["accepted"] > 0
    metrics = httpx.get(server.base_url + "/metrics").text
    assert f'vllm_mlx_speculative_accepted_total{{method="{method}"}}' in metrics


def refused_at_start(*args: str, says: str) -> None:
    """`vllm-mlx serve ARGS` exits with an error that says ``says``."""
    import subprocess
    import sys
    from pathlib import Path

    serve = [str(Path(sys.executable).with_name("vllm-mlx")), "serve", *map(str, args), "--port", "9"]
    result = subprocess.run(serve, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert says in result.stderr + result.stdout


def test_the_request_field(speculating_server, plain_qwen3_server):
    import openai

    messages = [{"role": "user", "content": "again: " + "one two three four " * 4}]
    fast = openai.OpenAI(base_url=speculating_server.base_url + "/v1", api_key="x")
    before = speculating_server.health()["engine"]["speculative"]["verify_steps"]
    out = fast.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=40, temperature=0,
                                       extra_body={"speculative": False})
    assert out.choices[0].finish_reason == "length"
    assert speculating_server.health()["engine"]["speculative"]["verify_steps"] == before  # this request alone
    # a thinking budget speculates too (the end of reasoning is forced at its position)
    budgeted = [fast.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=40, temperature=0,
                                             extra_body={"speculative": flag, "max_thinking_tokens": 4})
                .choices[0].message.model_dump() for flag in (False, True)]
    assert budgeted[0] == budgeted[1]
    # a seeded sampled request speculates, and answers what it answers without speculation
    seeded = [fast.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=40, temperature=0.8,
                                           seed=11, extra_body={"speculative": flag}).choices[0].message.content
              for flag in (False, True)]
    assert seeded[0] == seeded[1] and seeded[0]
    # output constraints speculate too (their grammar masks each proposed position): the same output
    tool = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}}, "required": ["path"]}}}]
    for constraint in (dict(response_format={"type": "json_object"}), dict(tools=tool, tool_choice="required")):
        before = speculating_server.health()["engine"]["speculative"]["accepted"]
        outs = [fast.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=60, temperature=0,
                                             extra_body={"speculative": flag}, **constraint).choices[0]
                for flag in (False, True)]
        assert outs[0].message.model_dump() == outs[1].message.model_dump() and outs[1].finish_reason
        assert speculating_server.health()["engine"]["speculative"]["accepted"] > before
    plain = openai.OpenAI(base_url=plain_qwen3_server.base_url + "/v1", api_key="x")
    with pytest.raises(openai.BadRequestError) as err:
        plain.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=8,
                                      extra_body={"speculative": True})
    assert "speculative decoding is off on this server (--speculative off" in err.value.body["message"]


def test_the_request_field_on_the_anthropic_and_responses_wings(plain_qwen3_server):
    import anthropic
    import openai

    wrong = "speculative decoding is off on this server"
    with pytest.raises(anthropic.BadRequestError, match=wrong):
        anthropic.Anthropic(base_url=plain_qwen3_server.base_url, api_key="x").messages.create(
            model="tiny-qwen3", max_tokens=8, messages=[{"role": "user", "content": "hi"}],
            extra_body={"speculative": True})
    with pytest.raises(openai.BadRequestError, match=wrong):
        openai.OpenAI(base_url=plain_qwen3_server.base_url + "/v1", api_key="x").responses.create(
            model="tiny-qwen3", input="hi", max_output_tokens=8, extra_body={"speculative": True})


def test_grammar_rows_speculate_within_their_grammar(engines):
    """A grammar row's proposals are masked position by position by its grammar (proposals it forbids
    are dropped before the step, the others verified under its masks); its output is the output without
    speculation -- also when the grammar starts after a trigger inside the proposals."""
    import re

    from vllm_mlx.engine.constraints import GrammarCompiler, StructuredSpec

    off, on = engines
    tok = on.tokenizer
    compiler = GrammarCompiler(tok, on.engine.core.vocab_size, sorted(tok.eos_token_ids))
    free = off.run([PROMPTS[1]], max_tokens=30, temperature=0)[0][1]
    cases = [(StructuredSpec(regex=r"(ab|cd|x[0-9]{1,3}){1,30}"), ()),
             (StructuredSpec(json_schema={"type": "object", "properties": {"a": {"type": "string"}}}), ()),
             (StructuredSpec(regex=r"[a-z ]{1,80}"), tuple(free[:2]))]  # starts after the first two tokens

    def run(harness, prompt, spec, after):
        req = harness.request(prompt, max_tokens=30, temperature=0)
        req.constraint, req.constraint_after = compiler.matcher(spec), after
        harness.engine.add_request(req)
        return harness.wait(req.request_id)

    want = [run(off, PROMPTS[1], spec, after) for spec, after in cases]
    before = dict(on.engine.stats.speculative)
    for (spec, after), (text, tokens, _) in zip(cases, want):
        with proposing(on, [PROMPTS[1]], [tokens]):
            assert run(on, PROMPTS[1], spec, after)[1] == tokens
    assert re.fullmatch(r"(ab|cd|x[0-9]{1,3}){1,30}", want[0][0]) or want[0][2].finish_reason.value == "length"
    after = on.engine.stats.speculative
    proposed, accepted = after["proposed"] - before["proposed"], after["accepted"] - before["accepted"]
    assert proposed > accepted > 0


@pytest.mark.parametrize("controls", [dict(presence_penalty=0.6, frequency_penalty=0.3), dict(repetition_penalty=1.3),
                                      dict(logit_bias=((7, 3.0), (11, -50.0))), dict(min_tokens=20, stop_token_ids=[0]),
                                      dict(repetition_penalty=1.2, logit_bias=((5, 2.0),), min_tokens=10)])
def test_rows_with_penalties_bias_and_min_tokens_speculate(engines, controls):
    """Penalties, logit bias and min_tokens apply at every position of a verify step as a plain step
    applies them to its one position (the proposals before a position count for its penalties): the
    output is the output without speculation. Proposals are the reference output with every third run's
    last token wrong."""
    off, on = engines
    controls = dict(controls)
    if "stop_token_ids" in controls:  # a token the row makes early: held back until min_tokens
        controls["stop_token_ids"] = [off.run([PROMPTS[4]], max_tokens=8, temperature=0)[0][1][2]]
    runs = [off.run([p], max_tokens=40, temperature=0, **controls)[0] for p in PROMPTS[:3]]
    assert all(r[2].error is None for r in runs)
    want = [r[1] for r in runs]
    before = dict(on.engine.stats.speculative)
    with proposing(on, PROMPTS, want):
        assert [r[1] for r in on.run(PROMPTS[:3], max_tokens=40, temperature=0, **controls)] == want
    after = on.engine.stats.speculative
    assert after["accepted"] - before["accepted"] > 10
    # sampled rows with the same controls speculate too and end where they should
    with always_verifying(on):
        outs = on.run([PROMPTS[4]] * 2, max_tokens=30, temperature=0.8, top_k=20, **controls)
    assert all(len(o[1]) <= 30 and o[2].finish_reason is not None for o in outs)


@pytest.mark.parametrize("controls", [dict(temperature=0.8), dict(temperature=0.7, top_k=20),
                                      dict(temperature=1.0, top_p=0.9), dict(temperature=0.9, min_p=0.05),
                                      dict(temperature=0.8, presence_penalty=0.5, logit_bias=((9, 2.0),))])
def test_seeded_sampled_rows_speculate_and_draw_the_same_tokens(engines, controls):
    """A verify step draws each position as a step at a time would (the row's key after as many splits,
    the same Gumbel-max draw) and keeps the proposals equal to its draws: a seeded sampled row gives the
    very tokens it gives without speculation, alone and beside other rows, accepting proposals."""
    off, on = engines
    prompts = PROMPTS[:3]
    want = [off.run([p], max_tokens=30, seed=21 + i, **controls)[0][1] for i, p in enumerate(prompts)]
    before = on.engine.stats.speculative["accepted"]
    with proposing(on, prompts, want):
        rids = [on.submit(p, max_tokens=30, seed=21 + i, **controls) for i, p in enumerate(prompts)]
        got = [on.wait(r)[1] for r in rids]
    assert got == want
    assert on.engine.stats.speculative["accepted"] - before > 10


@pytest.mark.parametrize("budget", [0, 5, 12])
def test_rows_with_a_thinking_budget_speculate(engines, budget):
    """A reasoning budget forces the end-of-reasoning marker where it runs out: proposals walk a copy
    of it (the forced tokens masked at their positions), alone and with a grammar that starts after the
    marker; the output is the output without speculation."""
    from vllm_mlx.engine.constraints import GrammarCompiler, StructuredSpec

    off, on = engines
    tok = on.tokenizer
    start, end = (1, 2), (3, 4)  # two-token markers (made-up ids): forced one by one
    compiler = GrammarCompiler(tok, on.engine.core.vocab_size, sorted(tok.eos_token_ids))

    def run(harness, prompt, grammar):
        req = harness.request(prompt, max_tokens=30, temperature=0, max_thinking_tokens=budget)
        req.reasoning_markers, req.starts_in_reasoning = (start, end), True
        if grammar:
            req.constraint, req.constraint_after = compiler.matcher(StructuredSpec(regex=r"[a-z ]{1,60}")), end
        harness.engine.add_request(req)
        return harness.wait(req.request_id)[1]

    for grammar in (False, True):
        want = [run(off, p, grammar) for p in PROMPTS[:3]]
        assert all(w[budget:budget + 2] == list(end) for w in want)  # the budget closed the reasoning there
        before = on.engine.stats.speculative["accepted"]
        with proposing(on, PROMPTS, want):
            assert [run(on, p, grammar) for p in PROMPTS[:3]] == want
        assert on.engine.stats.speculative["accepted"] > before
