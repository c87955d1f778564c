"""A served model's serving state: the engine handle, the tokenizer, limits and defaults, and the
steps every request shares (checks, structured output, sampling parameters, tokenizing off the
event loop, memory admission, the engine stream). The chat pipeline on top is in ``chat.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..config import SamplingDefaults
from ..limits import Limits
from .adapters import adapter_for, adapter_ids
from .admission import AdmittedStream, MemoryAdmission
from ..engine.async_engine import AsyncEngine
from ..engine.constraints import GrammarCompiler, GrammarError, StructuredSpec
from ..engine.request import FinishReason, GenerationOutput, GenerationRequest, SamplingParams
from .chat import ChatSteps
from .errors import APIError, ContextOverflow
from .request_limits import check_generation_limits, check_prompt_count
from .requests import ChatRequest, RequestModel, SamplingRequest
from .running import RunningRequests

logger = logging.getLogger(__name__)


@dataclass
class ServingState(ChatSteps):
    engine: AsyncEngine
    tokenizer: Any
    model_name: str  # first served name
    aliases: tuple[str, ...]
    max_model_len: int
    default_max_tokens: int
    defaults: SamplingDefaults = field(default_factory=lambda: SamplingDefaults())
    strict_model_id: bool = False
    _compiler: GrammarCompiler | None = None  # built on first use (the llguidance tokenizer takes ~1 s)
    tool_parser: str | None = None  # output parsers for this model (detected or from the flags)
    reasoning_parser: str | None = None
    special_tokens: frozenset[str] = frozenset()  # tokens the detokenizer drops unless told to keep them
    vision: Any = None  # vision_inputs.VisionInputs for a vision-language model (None: text-only)
    limits: Limits = field(default_factory=Limits)
    admission: MemoryAdmission | None = None  # memory-aware admission (None: off)
    prompt_guard: Any = None  # prompt_guard.PromptGuard: size bound before tokenizing, tokenizer lanes
    running: RunningRequests = field(default_factory=RunningRequests)  # by public id, for listing and cancel
    adapters: dict[str, str] = field(default_factory=dict)  # --lora: served LoRA adapters, name -> folder
    _content_tokens: Any = None  # content_tokens.ContentTokens, built on first use

    # -- request checks -------------------------------------------------------
    def admit(self, req: SamplingRequest, route: str) -> None:
        """The checks every generation route makes first: unknown fields, model id, unsupported fields."""
        self.warn_unknown_fields(req, route)
        self.check_model(req.model)
        self.adapter_of(req)
        if getattr(req, "prompt", None) is not None:
            check_prompt_count(self.limits, req.prompt)
        self.reject_unsupported(req)

    def warn_unknown_fields(self, req: RequestModel, route: str) -> None:
        if req.model_extra:
            logger.warning("%s: ignoring unknown field(s) %s", route, sorted(req.model_extra))

    def reject_unsupported(self, req: SamplingRequest) -> None:
        """Known parameters this server cannot honour yet get a 400, never silent ignoring."""
        unsupported = {
            "echo": bool(getattr(req, "echo", False)),
            "suffix": getattr(req, "suffix", None) is not None,
            "best_of": getattr(req, "best_of", None) not in (None, 1, req.n),
        }
        for param, bad in unsupported.items():
            if bad:
                raise APIError(400, f"'{param}' is not supported by this server yet", param=param)

    def check_model(self, requested: str) -> None:
        """With --strict-model-id, the request must name the served model or an alias."""
        names = (self.model_name, *self.aliases)
        if self.strict_model_id and requested not in (*names, *adapter_ids(self.adapters, names)):
            raise APIError(
                404, f"The model '{requested}' does not exist; this server serves "
                f"{', '.join(repr(n) for n in (self.model_name, *self.aliases))}",
                param="model", code="model_not_found",
            )

    def adapter_of(self, req: SamplingRequest) -> str | None:
        """The served LoRA adapter a request names (None: the base model); 404 for one not served."""
        return adapter_for(req, self.adapters, (self.model_name, *self.aliases))

    # -- structured output ---------------------------------------------------------
    def structured_spec(self, req: SamplingRequest) -> tuple[str, StructuredSpec] | None:
        """(field it came from, the output constraint) a request asks for; at most one field may be used."""
        specs: list[tuple[str, StructuredSpec]] = []
        rf = req.response_format
        if rf is not None:
            kind = rf.get("type", "text")
            if kind == "json_object":
                specs.append(("response_format", StructuredSpec(json_schema={"type": "object"})))
            elif kind == "json_schema":
                body = rf.get("json_schema") or {}
                schema = body.get("schema", body.get("schema_"))
                if not isinstance(schema, dict):
                    raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                                   param="response_format")
                specs.append(("response_format", StructuredSpec(json_schema=schema)))
            elif kind != "text":
                raise APIError(400, f"unknown response_format type {kind!r}", param="response_format")
        given = [(f"structured_outputs.{k}", k, v) for k, v in (req.structured_outputs or {}).items()]
        given += [(f"guided_{k}", k, v) for k, v in (("json", req.guided_json), ("regex", req.guided_regex),
                                                     ("choice", req.guided_choice), ("grammar", req.guided_grammar))]
        for param, key, value in given:
            if value is None or key in ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"):
                continue
            if key == "json":
                try:
                    schema = json.loads(value) if isinstance(value, str) else value
                except json.JSONDecodeError as exc:
                    raise APIError(400, f"{param} is not valid JSON: {exc}", param=param) from exc
                specs.append((param, StructuredSpec(json_schema=schema)))
            elif key == "regex":
                specs.append((param, StructuredSpec(regex=value)))
            elif key == "choice":
                specs.append((param, StructuredSpec(choice=tuple(value))))
            elif key == "grammar":
                specs.append((param, StructuredSpec(lark=value)))
            else:
                raise APIError(400, f"{param} is not supported", param=param)
        if len(specs) > 1:
            raise APIError(400, f"give one output constraint, not {len(specs)}: {', '.join(p for p, _ in specs)}",
                           param=specs[1][0])
        return specs[0] if specs else None

    async def compile_constraint(self, spec: StructuredSpec, param: str = "response_format") -> Any:
        if self._compiler is None:
            engine = self.engine.engine
            self._compiler = GrammarCompiler(self.tokenizer, engine.vocab_size, sorted(self.tokenizer.eos_token_ids))
        try:
            matcher = await asyncio.to_thread(self._compiler.matcher, spec)
        except GrammarError as exc:
            raise APIError(400, f"the output constraint cannot be compiled: {exc}", param=param) from exc
        # an engine process compiles its own matcher (a native object): the spec crosses, checked here
        return spec if getattr(self.engine.engine, "remote", False) else matcher

    def reasoning_end_tokens(self, prompt_opens_reasoning: bool) -> tuple[int, ...]:
        """Token ids after which a constraint starts: the end of reasoning, when the prompt left
        reasoning open (otherwise the constraint applies from the first token)."""
        if prompt_opens_reasoning and getattr(self.tokenizer, "has_thinking", False):
            return tuple(self.tokenizer.think_end_tokens or ())
        return ()

    # -- prompts ----------------------------------------------------------------
    def sampling_params(self, req: SamplingRequest, prompt_len: int, max_tokens: int | None,
                        logprobs: bool = False, top_logprobs: int = 0,
                        max_thinking_tokens: int | None = None) -> SamplingParams:
        prompt_param = "messages" if isinstance(req, ChatRequest) else "prompt"
        check_generation_limits(self.limits, prompt_len, max_tokens, prompt_param)
        budget = self.max_model_len - prompt_len
        if budget < 1:
            raise ContextOverflow(
                f"the prompt has {prompt_len} tokens, which leaves no room to generate within "
                f"the context budget of {self.max_model_len} tokens",
                prompt_tokens=prompt_len, max_prompt_tokens=self.max_model_len - 1, param=prompt_param)
        if max_tokens is not None and prompt_len + max_tokens > self.max_model_len:
            raise ContextOverflow(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} "
                f"exceeds the context budget of {self.max_model_len} tokens",
                prompt_tokens=prompt_len, max_prompt_tokens=self.max_model_len - 1, param="max_tokens",
                max_tokens=max_tokens)
        d = self.defaults
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())

        def pick(value, default):
            return default if value is None else value

        params = SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else min(self.default_max_tokens, budget),
            temperature=pick(req.temperature, d.temperature),
            top_p=pick(req.top_p, d.top_p),
            top_k=max(pick(req.top_k, d.top_k), 0),
            min_p=pick(req.min_p, d.min_p),
            seed=req.seed,
            stop=stop,
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            presence_penalty=pick(req.presence_penalty, d.presence_penalty),
            frequency_penalty=pick(req.frequency_penalty, d.frequency_penalty),
            repetition_penalty=pick(req.repetition_penalty, d.repetition_penalty),
            logit_bias=self._logit_bias(req.logit_bias),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            n=req.n,
            max_thinking_tokens=max_thinking_tokens,
            speculative=req.speculative is not False,
            adapter=self.adapter_of(req),
        )
        try:
            params.validate()
        except ValueError as exc:
            raise APIError(400, str(exc)) from exc
        if req.speculative and getattr(self.engine.engine.config, "speculative", "off") == "off":
            raise APIError(400, "speculative decoding is off on this server (--speculative off or --deterministic, "
                           "or a model that cannot speculate: its start-up log says why)",
                           param="speculative")  # `true` must be honoured
        return params

    def _logit_bias(self, bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
        items = []
        vocab = len(self.tokenizer)
        for key, value in (bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise APIError(400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias")
            if not 0 <= token < vocab:
                raise APIError(400, f"logit_bias token id {token} is outside the vocabulary (0..{vocab - 1})",
                               param="logit_bias")
            items.append((token, float(value)))
        return tuple(items)

    async def tokenize(self, fn, *args) -> Any:
        """Run tokenizer work off the event loop (on the prompt guard's lanes when there is one)."""
        if self.prompt_guard is not None:
            return await self.prompt_guard.run(fn, *args)
        return await asyncio.to_thread(fn, *args)

    # -- the generation steps every chat-shaped API shares --------------------------------
    async def wait_for_memory(self, *runs: tuple[int, SamplingParams]) -> None:
        """Wait until generations of these (prompt length, params) fit the memory budget (else 503)."""
        if self.admission is not None:
            need = sum(self.admission.need(n, params) for n, params in runs)
            await self.admission.wait_for_room(min(need, self.admission.budget_bytes))

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                 constraint: Any = None, constraint_after: tuple[int, ...] = (),
                 keep_special_tokens: bool = False, reasoning_markers=None,
                 starts_in_reasoning: bool = False, multimodal: Any = None,
                 checkpoints: tuple[int, ...] = (), group: str | None = None) -> AsyncIterator[GenerationOutput]:
        """The engine stream of one generation; its memory is reserved now (503 when it does not fit).
        ``group``: the public id of the HTTP request it belongs to, when that is not ``request_id``
        (the prompts of a completions request, the rounds of an MCP loop): what a cancel names."""
        if not self.engine.engine.alive:
            raise APIError(503, "the engine is not running", code="engine_unavailable")
        reservation = None
        if self.admission is not None:
            reservation = self.admission.reserve(self.admission.need(len(prompt_ids), params))
        request = GenerationRequest(request_id=request_id, prompt_token_ids=prompt_ids, sampling=params,
                                    constraint=constraint, constraint_after=constraint_after,
                                    keep_special_tokens=keep_special_tokens, reasoning_markers=reasoning_markers,
                                    starts_in_reasoning=starts_in_reasoning, multimodal=multimodal,
                                    checkpoints=checkpoints)
        return self.running.track(AdmittedStream(self.engine.generate(request), reservation), request_id,
                                  group or request_id, params.n, len(prompt_ids), self.engine.engine.abort)


def finish_reason_text(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}.get(reason, reason.value)
