"""Images in tool results (an Anthropic ``tool_result`` with image blocks, a chat ``tool`` message or
a Responses ``function_call_output`` with image parts): what the model gets to see of them.

* A vision model sees them: the tool message keeps its text, and its images move into a user message
  right after the tool results (merged into the next user message when there is one). Chat templates
  differ in whether they render media inside a ``tool`` turn at all; a user turn they all render.
* A text-only model gets a short note in the image's place, ``[image omitted: this model does not
  accept images]``, instead of refusing the request: agent clients (Claude Code's Read tool on a PNG,
  a screenshot tool) send images in tool results whatever the model, and the conversation goes on.
"""

from __future__ import annotations

from typing import Any

from .requests import ChatMessage
from .vision_inputs import IMAGE_PART_TYPES, VIDEO_PART_TYPES

IMAGE_OMITTED = "[image omitted: this model does not accept images]"
VIDEO_OMITTED = "[video omitted: this model does not accept video]"
MEDIA_TYPES = IMAGE_PART_TYPES + VIDEO_PART_TYPES


def _part(part: Any) -> dict:
    return part if isinstance(part, dict) else part.model_dump(exclude_none=True)


def _has_media(message: ChatMessage) -> bool:
    return message.role == "tool" and isinstance(message.content, list) and any(
        _part(p).get("type") in MEDIA_TYPES for p in message.content)


def _split(message: ChatMessage, vision: bool) -> tuple[str, list[dict]]:
    """(the tool result's text, its media parts); on a text-only model the media become notes."""
    texts, media = [], []
    for part in map(_part, message.content):
        kind = part.get("type")
        if kind in MEDIA_TYPES:
            if vision:
                media.append(part)
            else:
                texts.append(VIDEO_OMITTED if kind in VIDEO_PART_TYPES else IMAGE_OMITTED)
        else:
            texts.append(str(part.get("text") or ""))
    return "\n".join(t for t in texts if t), media


def tool_result_media(messages: list[ChatMessage], vision: bool) -> list[ChatMessage]:
    """The messages with the media of tool results handled as the module docstring says."""
    if not any(_has_media(m) for m in messages):
        return messages
    out: list[ChatMessage] = []
    lifted: list[dict] = []
    for message in messages:
        if _has_media(message):
            text, media = _split(message, vision)
            out.append(message.model_copy(update={"content": text}))
            lifted += media
            continue
        if lifted and message.role != "tool":
            if message.role == "user":
                content = message.content
                rest = [{"type": "text", "text": content}] if isinstance(content, str) and content else \
                    [_part(p) for p in content or []] if isinstance(content, list) else []
                out.append(ChatMessage.model_validate({**message.model_dump(exclude_none=True),
                                                       "content": lifted + rest}))
                lifted = []
                continue
            out.append(ChatMessage(role="user", content=lifted))
            lifted = []
        out.append(message)
    if lifted:
        out.append(ChatMessage(role="user", content=lifted))
    return out
