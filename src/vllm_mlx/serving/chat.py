"""The chat pipeline every API shares: one request in, one engine stream out.

:meth:`ChatSteps.start_chat` does, once, what a chat-shaped request needs whatever API it came
through (chat completions, Responses, Anthropic Messages, the MCP loop): the model check, the
output constraint, rendering with the chat template (off the event loop), media, sampling
parameters, memory admission and the engine stream with its output parsing. The API wings only
translate their wire format into a :class:`~.requests.ChatRequest` and parser events back out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ..engine.constraints import StructuredSpec
from ..engine.request import GenerationOutput, SamplingParams
from ..parsers import prompt_opens_reasoning, required_markers
from .chat_output import OutputParsing, history_message
from .errors import APIError
from .content_tokens import ContentTokens
from .reasoning_budget import effort_switches, thinking_budget
from .request_limits import check_chat_limits
from .tool_choice import AUTO_CONSTRAINT, ToolChoiceSteps
from .tool_media import tool_result_media
from .requests import ChatMessage, ChatRequest
from .turn_boundaries import remap_after_media, turn_boundaries
from .vision_inputs import template_parts

logger = logging.getLogger(__name__)


@dataclass
class ChatRun:
    parsing: OutputParsing
    params: SamplingParams
    stream: AsyncIterator[GenerationOutput]
    prompt_tokens: int


@dataclass(frozen=True)
class ChatPolicy:
    """Where an API's chat handling really differs — the one place such differences are named."""

    # Anthropic clients ask for far more output than fits (Claude Code: max_tokens 32000): clamp it to
    # the context left, as the Messages API documents, instead of answering 400 as chat does.
    clamp_max_tokens: bool = False


CHAT_POLICY = ChatPolicy()
MESSAGES_POLICY = ChatPolicy(clamp_max_tokens=True)


@dataclass(frozen=True)
class RenderedChat:
    ids: list[int]
    text: str
    thinking: bool  # the template let the model reason (enable_thinking not switched off)
    media: tuple = ()  # vision_inputs.MediaRef of each image/video, in message order
    multimodal: Any = None  # engine.multimodal.MultimodalPrompt, once the media are prepared
    checkpoints: tuple[int, ...] = ()  # positions where the conversation may branch (turn_boundaries)
    marked: str | None = None  # the prompt with content placeholders, when contents held special-token text


class ChatSteps(ToolChoiceSteps):
    """The chat steps of :class:`~.state.ServingState` (a model's serving state)."""

    def render_chat(self, req: ChatRequest, constrained: bool = False) -> RenderedChat:
        """The prompt (ids and text), and whether the model will think (reason) before answering.

        Message contents are rendered with their special-token text kept as text (content_tokens)."""
        check_chat_limits(self.limits, req.messages, req.tools)
        media: list | None = [] if self.vision is not None else None
        source = tool_result_media(req.messages, self.vision is not None)
        try:
            messages = [history_message(_message_dict(m, media, f"messages.{i}.content"))
                        for i, m in enumerate(source)]
        except (TypeError, ValueError, AttributeError) as exc:  # e.g. tool_calls that are not objects
            raise APIError(400, f"messages: a message is malformed ({exc})", param="messages") from exc
        kwargs = dict(req.chat_template_kwargs or {})
        for key, value in effort_switches(req.reasoning_effort).items():
            kwargs.setdefault(key, value)
        if req.enable_thinking is not None:
            kwargs["enable_thinking"] = req.enable_thinking
        if constrained:
            # Structured output: answer directly unless the request asked for thinking.
            kwargs.setdefault("enable_thinking", False)
        if req.tools and (req.tool_choice != "none"):
            kwargs["tools"] = req.tools
        protect = self.content_tokens.protect
        messages, kwargs = protect(messages), {k: protect(v) if k == "tools" else v for k, v in kwargs.items()}
        try:
            marked = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=req.add_generation_prompt, tokenize=False, **kwargs
            )
        except Exception as exc:  # template errors are the request's fault (e.g. bad role order)
            raise APIError(400, f"the chat template could not render these messages: {exc}", param="messages")
        thinking = kwargs.get("enable_thinking", True) is not False
        prompt = self.content_tokens.restore(marked)
        if self.prompt_guard is not None:
            self.prompt_guard.check(prompt)
        encode = self.content_tokens.encode
        ids = encode(marked)
        checkpoints = ()
        if self.wants_checkpoints:
            checkpoints = turn_boundaries(
                lambda msgs: self.tokenizer.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False,
                                                                **kwargs),
                encode, messages, marked, ids)
        return RenderedChat(ids, prompt, thinking, tuple(media or ()), checkpoints=checkpoints,
                            marked=marked if marked != prompt else None)

    @property
    def content_tokens(self) -> ContentTokens:
        """Special-token text in contents kept as text (built once per served model)."""
        if self._content_tokens is None:
            self._content_tokens = ContentTokens(self.tokenizer)
        return self._content_tokens

    @property
    def wants_checkpoints(self) -> bool:
        """Whether the engine's prefix cache resumes only from checkpoints (recurrent or
        sliding-window layers), so template boundaries are worth computing."""
        cache = getattr(self.engine.engine, "prefix_cache", None)
        return cache is not None and not cache.block_mode

    def output_parsing(self, req: ChatRequest, rendered: RenderedChat) -> OutputParsing:
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

    async def prepare_media(self, rendered: RenderedChat) -> RenderedChat:
        """Fetch, decode and process a rendered chat's images/video: the prompt grows by their tokens."""
        if not rendered.media or rendered.multimodal is not None:
            return rendered
        ids, mm = await self.vision.prepare(rendered.marked or rendered.text, list(rendered.media),
                                           self.content_tokens.encode)
        # Checkpoint positions after a media placeholder move by its expansion.
        checkpoints = remap_after_media(rendered.checkpoints, rendered.ids, ids,
                                        set(self.vision.info.token_ids.values()))
        return RenderedChat(ids, rendered.text, rendered.thinking, rendered.media, mm, checkpoints, rendered.marked)

    async def prepare_prompt(self, req: ChatRequest) -> tuple[tuple[str, StructuredSpec] | None, RenderedChat]:
        """The output constraint a chat request asks for, and its prompt: rendered by the chat
        template off the event loop, media fetched and expanded (also what counts its tokens)."""
        self.check_model(req.model)
        self.adapter_of(req)
        spec = self.output_constraint(req)
        # structured output and forced calls answer directly unless asked to think; custom tools' grammars do not
        rendered = await self.tokenize(self.render_chat, req, spec is not None and spec[0] != AUTO_CONSTRAINT)
        return spec, await self.prepare_media(rendered)

    async def start_chat(self, req: ChatRequest, request_id: str, policy: ChatPolicy = CHAT_POLICY,
                         logprobs: bool = False, top_logprobs: int = 0, group: str | None = None) -> ChatRun:
        """A chat generation, the same for every API: checks, constraint, rendering, media, sampling
        parameters, memory admission, and the engine stream with its output parsing. ``group``: the
        public id it runs under when that is not ``request_id`` (see ``ServingState.generate``)."""
        spec, rendered = await self.prepare_prompt(req)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is not None and policy.clamp_max_tokens:
            max_tokens = min(max_tokens, max(self.max_model_len - len(rendered.ids), 1))
        parsing = self.output_parsing(req, rendered)
        answer_room = max_tokens or min(self.default_max_tokens, max(self.max_model_len - len(rendered.ids), 1))
        explicit = req.max_thinking_tokens
        if explicit is None and req.reasoning_effort is None:
            explicit = self.defaults.max_thinking_tokens  # --max-thinking-tokens
        budget = thinking_budget(req.reasoning_effort, explicit, answer_room) \
            if rendered.thinking else None
        params = self.sampling_params(req, len(rendered.ids), max_tokens, logprobs=logprobs, top_logprobs=top_logprobs,
                                      max_thinking_tokens=budget)
        constraint = await self.compile_constraint(*reversed(spec)) if spec else None
        await self.wait_for_memory((len(rendered.ids), params))
        stream = self.generate(
            request_id, rendered.ids, params, constraint,
            self.reasoning_end_tokens(parsing.starts_in_reasoning) if spec else (),
            keep_special_tokens=self.keep_special_tokens(parsing),
            reasoning_markers=self.reasoning_markers(parsing) if budget is not None else None,
            starts_in_reasoning=parsing.starts_in_reasoning, multimodal=rendered.multimodal,
            checkpoints=rendered.checkpoints, group=group,
        )
        return ChatRun(parsing, params, stream, len(rendered.ids))


def _message_dict(message: ChatMessage, media: list | None = None, where: str = "messages") -> dict[str, Any]:
    """A chat message for the template; image/video parts are collected in ``media`` (None: text-only model)."""
    data = message.model_dump(exclude_none=True)
    if "reasoning" in data and "reasoning_content" not in data:  # the alias some clients send back
        data["reasoning_content"] = data["reasoning"]
    content = message.content
    if isinstance(content, list):
        data["content"] = template_parts(content, media, where)
    elif content is None:
        data["content"] = ""
    return data
