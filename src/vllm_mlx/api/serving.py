"""What the API adapters share: the engine handle, the tokenizer, limits and defaults.

Adapters turn wire requests into :class:`GenerationRequest` objects here, so
every API applies the same validation, context budget and defaults.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..config import SamplingDefaults
from ..limits import Limits
from .admission import AdmittedStream, MemoryAdmission
from .request_limits import check_chat_limits, check_generation_limits, check_prompt_count
from .turn_boundaries import remap_after_media, turn_boundaries
from ..engine.async_engine import AsyncEngine
from ..engine.constraints import GrammarCompiler, GrammarError, StructuredSpec, tool_call_spec
from ..parsers import prompt_opens_reasoning, required_markers
from .chat_output import OutputParsing, history_message
from ..engine.request import FinishReason, GenerationOutput, GenerationRequest, SamplingParams
from .errors import APIError
from .protocol import ChatCompletionRequest, ChatMessage, OpenAIRequest, SamplingFields
from .vision_inputs import template_parts

logger = logging.getLogger(__name__)


# Tool-call markup that tool_choice "required"/named can be enforced in: (open tag, close tag, arguments key).
TOOL_CALL_MARKUP = {
    "hermes": ("<tool_call>", "</tool_call>", "arguments"),
    "llama3_json": ("", "", "parameters"),
}


@dataclass
class ChatRun:
    parsing: OutputParsing
    params: SamplingParams
    stream: AsyncIterator[GenerationOutput]


@dataclass(frozen=True)
class RenderedChat:
    ids: list[int]
    text: str
    thinking: bool  # the template let the model reason (enable_thinking not switched off)
    media: tuple = ()  # vision_inputs.MediaRef of each image/video, in message order
    multimodal: Any = None  # engine.multimodal.MultimodalPrompt, once the media are prepared
    checkpoints: tuple[int, ...] = ()  # positions where the conversation may branch (turn_boundaries)


@dataclass
class ServingState:
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

    # -- request checks -------------------------------------------------------
    def admit(self, req: SamplingFields, route: str) -> None:
        """The checks every generation route makes first: unknown fields, model id, unsupported fields."""
        self.warn_unknown_fields(req, route)
        self.check_model(req.model)
        if getattr(req, "prompt", None) is not None:
            check_prompt_count(self.limits, req.prompt)
        self.reject_unsupported(req)

    def warn_unknown_fields(self, req: OpenAIRequest, route: str) -> None:
        if req.model_extra:
            logger.warning("%s: ignoring unknown field(s) %s", route, sorted(req.model_extra))

    def reject_unsupported(self, req: SamplingFields) -> None:
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
        if self.strict_model_id and requested not in (self.model_name, *self.aliases):
            raise APIError(
                404, f"The model '{requested}' does not exist; this server serves "
                f"{', '.join(repr(n) for n in (self.model_name, *self.aliases))}",
                param="model", code="model_not_found",
            )

    # -- structured output ---------------------------------------------------------
    def structured_spec(self, req: SamplingFields) -> tuple[str, StructuredSpec] | None:
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
            return await asyncio.to_thread(self._compiler.matcher, spec)
        except GrammarError as exc:
            raise APIError(400, f"the output constraint cannot be compiled: {exc}", param=param) from exc

    def reasoning_end_tokens(self, prompt_opens_reasoning: bool) -> tuple[int, ...]:
        """Token ids after which a constraint starts: the end of reasoning, when the prompt left
        reasoning open (otherwise the constraint applies from the first token)."""
        if prompt_opens_reasoning and getattr(self.tokenizer, "has_thinking", False):
            return tuple(self.tokenizer.think_end_tokens or ())
        return ()

    # -- prompts ----------------------------------------------------------------
    def render_chat(self, req: ChatCompletionRequest, constrained: bool = False) -> RenderedChat:
        """The prompt (ids and text), and whether the model will think (reason) before answering."""
        check_chat_limits(self.limits, req.messages, req.tools)
        media: list | None = [] if self.vision is not None else None
        try:
            messages = [history_message(_message_dict(m, media, f"messages.{i}.content"))
                        for i, m in enumerate(req.messages)]
        except (TypeError, ValueError, AttributeError) as exc:  # e.g. tool_calls that are not objects
            raise APIError(400, f"messages: a message is malformed ({exc})", param="messages") from exc
        kwargs = dict(req.chat_template_kwargs or {})
        if req.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", req.reasoning_effort)
            kwargs.setdefault("enable_thinking", req.reasoning_effort not in ("none", "minimal"))
        if req.enable_thinking is not None:
            kwargs["enable_thinking"] = req.enable_thinking
        if constrained:
            # Structured output: answer directly unless the request asked for thinking.
            kwargs.setdefault("enable_thinking", False)
        if req.tools and (req.tool_choice != "none"):
            kwargs["tools"] = req.tools
        try:
            prompt = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=req.add_generation_prompt, tokenize=False, **kwargs
            )
        except Exception as exc:  # template errors are the request's fault (e.g. bad role order)
            raise APIError(400, f"the chat template could not render these messages: {exc}", param="messages")
        thinking = kwargs.get("enable_thinking", True) is not False
        if self.prompt_guard is not None:
            self.prompt_guard.check(prompt)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        checkpoints = ()
        if self.wants_checkpoints:
            checkpoints = turn_boundaries(
                lambda msgs: self.tokenizer.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False,
                                                                **kwargs),
                lambda text: self.tokenizer.encode(text, add_special_tokens=False), messages, prompt, ids)
        return RenderedChat(ids, prompt, thinking, tuple(media or ()), checkpoints=checkpoints)

    @property
    def wants_checkpoints(self) -> bool:
        """Whether the engine's prefix cache resumes only from checkpoints (recurrent or
        sliding-window layers), so template boundaries are worth computing."""
        cache = getattr(self.engine.engine, "prefix_cache", None)
        return cache is not None and not cache.block_mode

    def output_parsing(self, req: ChatCompletionRequest, rendered: RenderedChat) -> OutputParsing:
        """Which parsers read this request's output: reasoning when the model thinks, tool calls
        only when the request offers tools (without tools, JSON in the output stays content)."""
        reasoning = self.reasoning_parser if rendered.thinking else None
        offers_tools = bool(req.tools) and req.tool_choice != "none"
        return OutputParsing(
            reasoning_parser=reasoning,
            tool_parser=self.tool_parser if offers_tools else None,
            tools=req.tools if offers_tools else None,
            starts_in_reasoning=prompt_opens_reasoning(reasoning, rendered.text),
        )

    def reasoning_markers(self, parsing: OutputParsing) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Token ids of the think tags, when this request's output is parsed for reasoning."""
        tok = self.tokenizer
        if parsing.reasoning_parser and getattr(tok, "has_thinking", False):
            return tuple(tok.think_start_tokens or ()), tuple(tok.think_end_tokens or ())
        return None

    def keep_special_tokens(self, parsing: OutputParsing) -> bool:
        """Keep special tokens in the text when a parser's markers are special tokens of this model."""
        return bool(required_markers(parsing.tool_parser, parsing.reasoning_parser) & self.special_tokens)

    def tool_choice_constraint(self, req: ChatCompletionRequest) -> tuple[str, StructuredSpec] | None:
        """``tool_choice`` "required" or a named function, enforced by a grammar (never downgraded)."""
        choice = req.tool_choice
        if not req.tools or choice in (None, "auto", "none"):
            if isinstance(choice, (dict, str)) and choice not in (None, "auto", "none") and not req.tools:
                raise APIError(400, "tool_choice needs tools", param="tool_choice")
            return None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") or choice.get("name")
            if not name:
                raise APIError(400, "tool_choice must name a function", param="tool_choice")
        elif choice == "required":
            name = None
        else:
            raise APIError(400, f"unknown tool_choice {choice!r}", param="tool_choice")
        markup = TOOL_CALL_MARKUP.get(self.tool_parser or "")
        if markup is None:
            raise APIError(400, f"tool_choice {choice!r} cannot be enforced for the {self.tool_parser or 'no'} "
                           f"tool-call format of this model", param="tool_choice")
        prefix, suffix, args_key = markup
        try:
            spec = tool_call_spec(req.tools, name=name, open_tag=self._tag(prefix), close_tag=self._tag(suffix),
                                  arguments_key=args_key, several=name is None and req.parallel_tool_calls is not False)
        except GrammarError as exc:
            raise APIError(400, str(exc), param="tool_choice") from exc
        return "tool_choice", spec

    def _tag(self, tag: str) -> str:
        """A markup tag as a Lark fragment: a special-token reference when the vocabulary has it."""
        if not tag:
            return '""'
        vocab = self.tokenizer.get_vocab() if hasattr(self.tokenizer, "get_vocab") else {}
        return tag if tag in vocab else json.dumps(tag)

    def sampling_params(self, req: SamplingFields, prompt_len: int, max_tokens: int | None,
                        logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams:
        prompt_param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
        check_generation_limits(self.limits, prompt_len, max_tokens, prompt_param)
        budget = self.max_model_len - prompt_len
        if budget < 1:
            raise APIError(
                400,
                f"the prompt has {prompt_len} tokens, which leaves no room to generate within "
                f"the context budget of {self.max_model_len} tokens",
                param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens is not None and prompt_len + max_tokens > self.max_model_len:
            raise APIError(
                400,
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} "
                f"exceeds the context budget of {self.max_model_len} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
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
            max_thinking_tokens=getattr(req, "max_thinking_tokens", None),
        )
        try:
            params.validate()
        except ValueError as exc:
            raise APIError(400, str(exc)) from exc
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
    def output_constraint(self, req: ChatCompletionRequest) -> tuple[str, StructuredSpec] | None:
        """The one grammar a request asks for: a structured-output format, or a forced tool call."""
        spec = self.structured_spec(req)
        forced_tools = self.tool_choice_constraint(req)
        if spec and forced_tools:
            raise APIError(400, "a forced tool_choice cannot be combined with a structured-output format",
                           param="tool_choice")
        return spec or forced_tools

    async def prepare_media(self, rendered: RenderedChat) -> RenderedChat:
        """Fetch, decode and process a rendered chat's images/video: the prompt grows by their tokens."""
        if not rendered.media or rendered.multimodal is not None:
            return rendered
        ids, mm = await self.vision.prepare(rendered.text, list(rendered.media))
        # Checkpoint positions after a media placeholder move by its expansion.
        checkpoints = remap_after_media(rendered.checkpoints, rendered.ids, ids,
                                        set(self.vision.info.token_ids.values()))
        return RenderedChat(ids, rendered.text, rendered.thinking, rendered.media, mm, checkpoints)

    async def start_chat(
        self, req: ChatCompletionRequest, request_id: str, rendered: RenderedChat,
        spec: tuple[str, StructuredSpec] | None, max_tokens: int | None,
        logprobs: bool = False, top_logprobs: int = 0,
    ) -> ChatRun:
        """Sampling, constraint, output parsing and the engine stream for a rendered chat request —
        the same for chat completions, Responses and Anthropic Messages."""
        rendered = await self.prepare_media(rendered)
        parsing = self.output_parsing(req, rendered)
        params = self.sampling_params(req, len(rendered.ids), max_tokens, logprobs=logprobs, top_logprobs=top_logprobs)
        constraint = await self.compile_constraint(*reversed(spec)) if spec else None
        await self.wait_for_memory((len(rendered.ids), params))
        stream = self.generate(
            request_id, rendered.ids, params, constraint,
            self.reasoning_end_tokens(parsing.starts_in_reasoning) if spec else (),
            keep_special_tokens=self.keep_special_tokens(parsing),
            reasoning_markers=self.reasoning_markers(parsing) if req.max_thinking_tokens is not None else None,
            starts_in_reasoning=parsing.starts_in_reasoning, multimodal=rendered.multimodal,
            checkpoints=rendered.checkpoints,
        )
        return ChatRun(parsing, params, stream)

    async def wait_for_memory(self, *runs: tuple[int, SamplingParams]) -> None:
        """Wait until generations of these (prompt length, params) fit the memory budget (else 503)."""
        if self.admission is not None:
            need = sum(self.admission.need(n, params) for n, params in runs)
            await self.admission.wait_for_room(min(need, self.admission.budget_bytes))

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                 constraint: Any = None, constraint_after: tuple[int, ...] = (),
                 keep_special_tokens: bool = False, reasoning_markers=None,
                 starts_in_reasoning: bool = False, multimodal: Any = None,
                 checkpoints: tuple[int, ...] = ()) -> AsyncIterator[GenerationOutput]:
        """The engine stream of one generation; its memory is reserved now (503 when it does not fit)."""
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
        return AdmittedStream(self.engine.generate(request), reservation)


def _message_dict(message: ChatMessage, media: list | None = None, where: str = "messages") -> dict[str, Any]:
    """A chat message for the template; image/video parts are collected in ``media`` (None: text-only model)."""
    data = message.model_dump(exclude_none=True)
    content = message.content
    if isinstance(content, list):
        data["content"] = template_parts(content, media, where)
    elif content is None:
        data["content"] = ""
    return data


def finish_reason_text(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}.get(reason, reason.value)
