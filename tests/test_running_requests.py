"""serving/running.py in process: the bookkeeping of running requests and the ends of a cancel, over a
stand-in engine stream that behaves like AsyncEngine.generate (ABORT ends the stream)."""

from __future__ import annotations

import asyncio

from vllm_mlx.engine.request import FinishReason, GenerationOutput
from vllm_mlx.serving.running import RunningRequests, api_of


class FakeEngine:
    """Makes deltas of n continuations until aborted; like AsyncEngine.generate, it stops at the first ABORT."""

    def __init__(self, n: int = 1):
        self.n = n
        self.aborted: list[str] = []
        self.submitted = False
        self.closed = False

    def abort(self, engine_id: str) -> None:
        self.aborted.append(engine_id)

    async def generate(self, engine_id: str):
        self.submitted = True
        try:
            step = 0
            while True:
                step += 1
                for i in range(self.n):
                    if self.aborted:
                        yield GenerationOutput(engine_id, index=i, finish_reason=FinishReason.ABORT, prompt_tokens=5,
                                               completion_tokens=step)
                        return
                    yield GenerationOutput(engine_id, index=i, text="x", token_ids=[1], prompt_tokens=5,
                                           cached_tokens=2, completion_tokens=step)
                await asyncio.sleep(0)
        finally:
            self.closed = True


def test_cancel_turns_the_abort_into_cancelled_for_every_continuation():
    async def main():
        running, engine = RunningRequests(), FakeEngine(n=3)
        stream = running.track(engine.generate("cmpl-a-0"), "cmpl-a-0", "cmpl-a", 3, 5, engine.abort)
        outs = [await stream.__anext__() for _ in range(6)]
        [entry] = running.snapshot("m")
        assert entry["id"] == "cmpl-a" and entry["api"] == "completions" and entry["n"] == 3
        assert entry["completion_tokens"] == 6 and entry["cache_hit_rate"] == 0.4
        assert [r.engine_id for r in running.cancel("cmpl-a")] == ["cmpl-a-0"] and engine.aborted == ["cmpl-a-0"]
        assert running.snapshot("m")[0]["state"] == "cancelling"
        outs = [out async for out in stream]
        assert [(o.index, o.finish_reason) for o in outs] == [(i, FinishReason.CANCELLED) for i in range(3)]
        assert len(running) == 0 and running.cancelled_total == 1

    asyncio.run(main())


def test_cancel_before_submission_never_reaches_the_engine():
    async def main():
        running, engine = RunningRequests(), FakeEngine()
        stream = running.track(engine.generate("msg_1"), "msg_1", "msg_1", 1, 7, engine.abort)
        running.cancel("msg_1")
        outs = [out async for out in stream]
        assert [(o.finish_reason, o.prompt_tokens) for o in outs] == [(FinishReason.CANCELLED, 7)]
        assert not engine.submitted and not engine.aborted and len(running) == 0

    asyncio.run(main())


def test_a_finished_or_abandoned_stream_is_no_longer_running():
    async def main():
        running, engine = RunningRequests(), FakeEngine()
        stream = running.track(engine.generate("chatcmpl-1"), "chatcmpl-1", "chatcmpl-1", 1, 5, engine.abort)
        await stream.__anext__()
        await stream.aclose()  # a client disconnect
        assert len(running) == 0 and running.cancel("chatcmpl-1") == [] and running.cancelled_total == 0
        never_read = running.track(engine.generate("resp_2"), "resp_2", "resp_2", 1, 5, engine.abort)
        assert len(running) == 1
        del never_read
        assert len(running) == 0

    asyncio.run(main())


def test_api_of_public_ids():
    assert [api_of(i) for i in ("chatcmpl-x", "cmpl-x", "resp_x", "msg_x", "warm-x", "other")] == [
        "chat.completions", "completions", "responses", "messages", "warm-up", "internal"]
