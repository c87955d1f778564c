"""What the API adapters share: the engine handle, the tokenizer, limits and defaults.

Adapters turn wire requests into :class:`GenerationRequest` objects here, so
every API applies the same validation, context budget and defaults.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..config import SamplingDefaults
from ..engine.async_engine import AsyncEngine
from ..engine.request import FinishReason, GenerationOutput, GenerationRequest, SamplingParams
from .errors import APIError
from .protocol import ChatCompletionRequest, ChatMessage, OpenAIRequest, SamplingFields

logger = logging.getLogger(__name__)


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

    # -- request checks -------------------------------------------------------
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
        if isinstance(req, ChatCompletionRequest):
            rf = (req.response_format or {}).get("type", "text")
            unsupported["response_format"] = rf != "text"
            choice = req.tool_choice
            unsupported["tool_choice"] = isinstance(choice, dict) or choice == "required"
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

    # -- prompts ----------------------------------------------------------------
    def render_chat(self, req: ChatCompletionRequest) -> list[int]:
        messages = [_message_dict(m) for m in req.messages]
        kwargs = dict(req.chat_template_kwargs or {})
        if req.tools and (req.tool_choice != "none"):
            kwargs["tools"] = req.tools
        try:
            prompt = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=req.add_generation_prompt, tokenize=False, **kwargs
            )
        except Exception as exc:  # template errors are the request's fault (e.g. bad role order)
            raise APIError(400, f"the chat template could not render these messages: {exc}", param="messages")
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def sampling_params(self, req: SamplingFields, prompt_len: int, max_tokens: int | None,
                        logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams:
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
        """Run tokenizer work off the event loop."""
        return await asyncio.to_thread(fn, *args)

    # -- generation -------------------------------------------------------------
    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[GenerationOutput]:
        request = GenerationRequest(request_id=request_id, prompt_token_ids=prompt_ids, sampling=params)
        async for out in self.engine.generate(request):
            yield out


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    data = message.model_dump(exclude_none=True)
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type in ("text", "input_text") and part.text is not None:
                texts.append(part.text)
            else:
                raise APIError(
                    400, f"content part type '{part.type}' is not supported by this text model", param="messages"
                )
        data["content"] = "".join(texts)
    elif content is None:
        data["content"] = ""
    return data


def finish_reason_text(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}.get(reason, reason.value)
