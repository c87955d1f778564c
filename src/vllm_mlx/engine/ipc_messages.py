"""What crosses between the API process and the engine process (``--engine-process``), as msgspec
Structs on pyzmq sockets (msgpack).

API -> engine: commands (:data:`Command`): add requests, abort one, end one continuation, abort all, clear the prefix cache,
set the admission bound, stop. A request crosses as its token ids, its sampling parameters and its
output constraint as a *spec* (:class:`~.constraints.StructuredSpec`): llguidance matchers are native
objects, so the engine process compiles its own. A vision request's media cross as processed pixels
(float32 bytes and their shape, with the grid, placeholder count and content hash).

Engine -> API: events (:data:`Event`): ``Ready`` once the model is loaded (what the API process
cannot know without the weights: vocabulary width, KV bytes per token, weight bytes, the backend),
``LoadFailed``, and ``StepOutputs``: every delta one step (or one command) produced, for all rows, as
ONE message, with the engine's stats snapshot after it.
"""

from __future__ import annotations

from typing import Union

import msgspec
import numpy as np

from .config import EngineStats
from .constraints import StructuredSpec
from .multimodal import MediaItem, MultimodalPrompt
from .request import FinishReason, GenerationOutput, GenerationRequest, SamplingParams, TokenLogprob


# -- requests and outputs -------------------------------------------------------------------------
class MediaMsg(msgspec.Struct, array_like=True):
    """One processed image or video: its pixels as raw float32 bytes and their shape."""

    kind: str
    pixels: bytes
    shape: tuple[int, ...]
    grid_thw: tuple[int, int, int]
    num_tokens: int
    digest: bytes


class MultimodalMsg(msgspec.Struct, array_like=True):
    items: list[MediaMsg]
    key_ids: list[int]


class RequestMsg(msgspec.Struct, array_like=True, omit_defaults=True):
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    constraint: StructuredSpec | None = None
    constraint_after: tuple[int, ...] = ()
    keep_special_tokens: bool = False
    reasoning_markers: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    starts_in_reasoning: bool = False
    checkpoints: tuple[int, ...] = ()
    multimodal: MultimodalMsg | None = None


class OutputMsg(msgspec.Struct, array_like=True, omit_defaults=True):
    request_id: str
    index: int = 0
    text: str = ""
    token_ids: list[int] = []
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    error_status: int = 500
    # (token id, logprob, ((alternative id, logprob), ...)) per new token, when requested
    logprobs: list[tuple[int, float, tuple[tuple[int, float], ...]]] | None = None
    stop_sequence: str | None = None


# -- commands (API -> engine) -------------------------------------------------------------------
class AddRequests(msgspec.Struct, tag=True):
    requests: list[RequestMsg]


class Abort(msgspec.Struct, tag=True):
    request_id: str


class FinishRow(msgspec.Struct, tag=True):
    request_id: str
    index: int


class AbortAll(msgspec.Struct, tag=True):
    pass


class ClearPrefixCache(msgspec.Struct, tag=True):
    pass


class SetMaxNumSeqs(msgspec.Struct, tag=True):
    n: int


class Stop(msgspec.Struct, tag=True):
    pass


Command = Union[AddRequests, Abort, FinishRow, AbortAll, ClearPrefixCache, SetMaxNumSeqs, Stop]


# -- events (engine -> API) ---------------------------------------------------------------------
class Ready(msgspec.Struct, tag=True):
    pid: int
    vocab_size: int
    kv_bytes_per_token: int
    weight_bytes: int
    backend: str | None  # BackendInfo.describe() of the engine process
    prefix_block_mode: bool | None  # the prefix cache's block_mode (None: no prefix cache)
    weight_dtypes: dict[str, int] = {}  # weight arrays by dtype
    speculative: str = "off"  # the speculation method --speculative came to for this model


class LoadFailed(msgspec.Struct, tag=True):
    error: str


class StepOutputs(msgspec.Struct, tag=True):
    outputs: list[OutputMsg]
    stats: EngineStats


Event = Union[Ready, LoadFailed, StepOutputs]


# -- conversions ---------------------------------------------------------------------------------
def request_msg(request: GenerationRequest) -> RequestMsg:
    """A request as it crosses; its constraint must be a spec (the engine process compiles it)."""
    constraint = request.constraint
    if constraint is not None and not isinstance(constraint, StructuredSpec):
        raise TypeError("a request for the engine process carries its constraint as a StructuredSpec")
    return RequestMsg(request.request_id, list(request.prompt_token_ids), request.sampling, constraint,
                      tuple(request.constraint_after), request.keep_special_tokens, request.reasoning_markers,
                      request.starts_in_reasoning, tuple(request.checkpoints), multimodal_msg(request.multimodal))


def multimodal_msg(mm: MultimodalPrompt | None) -> MultimodalMsg | None:
    if mm is None:
        return None
    items = [MediaMsg(it.kind, np.ascontiguousarray(it.pixel_values, dtype=np.float32).tobytes(),
                      tuple(it.pixel_values.shape), it.grid_thw, it.num_tokens, it.digest) for it in mm.items]
    return MultimodalMsg(items, list(mm.key_ids))


def multimodal_prompt(msg: MultimodalMsg | None) -> MultimodalPrompt | None:
    if msg is None:
        return None
    items = [MediaItem(m.kind, np.frombuffer(m.pixels, dtype=np.float32).reshape(m.shape), m.grid_thw, m.num_tokens,
                       m.digest) for m in msg.items]
    return MultimodalPrompt(items, msg.key_ids)


def generation_request(msg: RequestMsg, constraint=None) -> GenerationRequest:
    """The engine-side request; ``constraint``: the matcher compiled from ``msg.constraint``."""
    return GenerationRequest(msg.request_id, msg.prompt_token_ids, msg.sampling, constraint=constraint,
                             constraint_after=msg.constraint_after, keep_special_tokens=msg.keep_special_tokens,
                             reasoning_markers=msg.reasoning_markers, starts_in_reasoning=msg.starts_in_reasoning,
                             multimodal=multimodal_prompt(msg.multimodal), checkpoints=msg.checkpoints)


def output_msg(out: GenerationOutput) -> OutputMsg:
    logprobs = None if out.logprobs is None else [(lp.token_id, lp.logprob, lp.top) for lp in out.logprobs]
    return OutputMsg(out.request_id, out.index, out.text, out.token_ids,
                     None if out.finish_reason is None else out.finish_reason.value, out.prompt_tokens,
                     out.completion_tokens, out.cached_tokens, out.error, out.error_status, logprobs,
                     out.stop_sequence)


def generation_output(msg: OutputMsg) -> GenerationOutput:
    logprobs = None if msg.logprobs is None else [TokenLogprob(t, lp, top) for t, lp, top in msg.logprobs]
    return GenerationOutput(msg.request_id, msg.index, msg.text, msg.token_ids,
                            None if msg.finish_reason is None else FinishReason(msg.finish_reason),
                            msg.prompt_tokens, msg.completion_tokens, msg.cached_tokens, msg.error, msg.error_status,
                            logprobs, msg.stop_sequence)


class Codec:
    """The encoders and decoders of one side (msgspec's are reusable; one per socket user)."""

    def __init__(self) -> None:
        self.encoder = msgspec.msgpack.Encoder()
        self.commands = msgspec.msgpack.Decoder(Command)
        self.events = msgspec.msgpack.Decoder(Event)

    def encode(self, message: msgspec.Struct) -> bytes:
        return self.encoder.encode(message)
