"""The engine step's record (engine/step_record.py): what EngineCore records of each step, its JSON
round trip, and a follower core that reaches the leader's state from the records alone."""

from __future__ import annotations

import json

import pytest

from vllm_mlx.engine.config import EngineConfig
from vllm_mlx.engine.core import EngineCore
from vllm_mlx.engine.distributed import FollowerCore
from vllm_mlx.engine.model_runner import ModelRunner
from vllm_mlx.engine.prefix_reuse import PrefixReuse, make_prefix_cache
from vllm_mlx.engine.request import GenerationRequest, SamplingParams
from vllm_mlx.engine.step_record import (Aborted, Added, CacheCleared, CacheShrunk, Chunk, FinishedRow, RowEnded,
                                         RowsFailed, Schedule, StepRecord)
from vllm_mlx.models.loader import load_model

CONFIG = EngineConfig(max_num_seqs=4, max_num_batched_tokens=40, prefix_cache=True, prefix_block_size=16,
                      cache_memory_bytes=64 << 20, speculative="off")  # records of speculative steps: test_distributed


@pytest.fixture(scope="module")
def loaded(tiny_qwen3):
    return load_model(str(tiny_qwen3), compute_dtype="float32")


def make_core(loaded, cls=EngineCore, **kwargs) -> EngineCore:
    prefix = PrefixReuse(make_prefix_cache(loaded, CONFIG), CONFIG)
    return cls(loaded, CONFIG, ModelRunner(loaded.model), prefix, lambda outputs: None, **kwargs)


def request(rid: str, prompt: list[int], **params) -> GenerationRequest:
    params.setdefault("temperature", 0)
    params.setdefault("ignore_eos", True)
    return GenerationRequest(rid, prompt, SamplingParams(**params))


def round_trip(record: StepRecord) -> StepRecord:
    return StepRecord.from_wire(json.loads(json.dumps(record.to_wire())))


def test_the_record_holds_the_decisions_in_order_and_the_schedule(loaded):
    core = make_core(loaded)
    prompt = list(range(10, 60))  # 50 tokens: two chunks under a 40-token budget
    core.add(request("a", prompt, max_tokens=3))
    core.add(request("b", [5, 6, 7]))
    core.abort("b")
    core.abort("nobody")  # decides nothing
    core.clear_prefix_cache()
    core.shrink_prefix_cache(1000)
    plan, record = core.schedule()
    assert record.events == [Added("a", prompt, 1, []), Added("b", [5, 6, 7], 1, []), Aborted("b"),
                             CacheCleared(), CacheShrunk(1000)]
    assert record.finished is None and record.tokens == []  # no step ended yet; tokens not asked for
    assert record.schedule == Schedule([Chunk("a", 0, 40, 0, 0)], running=0, prefilling=1, waiting=0,
                                       batch_rows=0)
    assert [(s.request_id, n) for s, n in plan.prefill] == [("a", 40)]
    assert round_trip(record) == record

    core.execute(plan)
    core.record_tokens = True
    plan, record = core.schedule()  # the handed-over events are gone: a new record starts empty
    assert record.events == [] and record.finished == []
    assert record.schedule == Schedule([Chunk("a", 0, 10, 40, 0)], running=0, prefilling=1, waiting=0,
                                       batch_rows=0)
    core.execute(plan)  # a's prompt is done: it joins the batch
    plan, record = core.schedule()
    assert record.schedule == Schedule([], running=1, prefilling=0, waiting=0, batch_rows=1)
    assert len(record.tokens) == 1  # the token a's next decode forward is fed
    core.execute(plan)
    seq = core.scheduler.find_row("a", 0)
    core.fail([seq], RuntimeError("boom"))
    core.add(request("c", prompt, n=2, max_tokens=4))
    core.finish_row("c", 0)  # still queued: ended before its first token
    core.finish_row("c", 1)  # not forked yet: no such row, nothing decided
    heartbeat = core.take_record()
    assert heartbeat.events == [RowsFailed([("a", 0)]), Added("c", prompt, 2, []), RowEnded("c", 0, [])]
    assert heartbeat.schedule is None and round_trip(heartbeat) == heartbeat


def test_finished_rows_and_ended_rows_carry_their_tokens(loaded):
    core = make_core(loaded)
    core.add(request("a", list(range(10, 30)), max_tokens=2))
    core.add(request("b", list(range(40, 60)), max_tokens=50))
    records = []
    while core.scheduler.find_row("a", 0) is not None or not records[-1].finished:
        plan, record = core.schedule()
        records.append(record)
        core.execute(plan)
    (done,) = [r for r in records if r.finished][0].finished
    assert done == FinishedRow("a", 0, "length", done.output_ids) and len(done.output_ids) == 2
    b = core.scheduler.find_row("b", 0)
    core.finish_row("b", 0)
    record = core.take_record()
    assert record.events == [RowEnded("b", 0, b.output_ids)] and b.output_ids
    assert round_trip(record) == record


def test_a_follower_fed_the_records_reaches_the_leaders_state(loaded):
    leader = make_core(loaded)
    leader.record_tokens = True
    follower = make_core(loaded, FollowerCore, rank=1)

    def state(core: EngineCore) -> list:
        sched = core.scheduler
        rows = [[(s.request_id, s.index, s.status.name, s.num_computed, s.num_cached_tokens) for s in group]
                for group in (sched.running, sched.prefilling, sched.waiting)]
        return [*rows, [(s.request_id, s.index) for s in core.runner.batch_seqs], core.prefix.cache.stats.entries]

    shared = list(range(100, 150))
    arrivals = {0: [request("a", shared, max_tokens=6), request("b", list(range(200, 230)), max_tokens=20, n=2)],
                2: [request("c", list(range(300, 370)), max_tokens=5)],
                9: [request("d", shared + [7, 8, 9], max_tokens=4)],  # a's prompt is cached by now
                11: [request("e", [1, 2, 3, 4], max_tokens=30)]}
    cached = 0
    for step in range(100):
        for req in arrivals.get(step, []):
            leader.add(req)
        if step == 6:
            leader.abort("c")
        if step == 12:
            leader.finish_row("b", 1)
        if step == 14:
            leader.clear_prefix_cache()
        if step == 16:  # a row that fails on rank 0 is dropped on the follower too
            failing = leader.scheduler.find_row("e", 0)
            assert failing is not None
            leader.fail([failing], RuntimeError("injected"))
        if not leader.scheduler.has_work:
            break
        plan, record = leader.schedule()
        follower.apply(round_trip(record))  # raises LockstepLost if the follower scheduled otherwise
        leader.execute(plan)
        cached = max(cached, *(c.num_cached_tokens for c in record.schedule.chunks), 0)
        if step % 3 == 2:  # the step's end reaches the follower in a heartbeat (else in the next record)
            follower.apply(round_trip(leader.take_record()))
            assert state(follower) == state(leader)
    assert cached >= 48  # d restored a's cached blocks, on both cores
    follower.apply(round_trip(leader.take_record()))  # the last step's end
    assert state(follower) == state(leader)
    assert not leader.scheduler.has_work and not follower.scheduler.has_work
    assert follower.prefix.cache.stats.bytes == leader.prefix.cache.stats.bytes
