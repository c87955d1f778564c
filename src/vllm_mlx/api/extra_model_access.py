"""Which served model answers an embedding or audio request, and the 501/404 answers when none can.

* the extra the kind needs is not installed -> 501 saying how to install it;
* no model of that kind is served -> 404 naming the flag that serves one;
* the request names a model of another kind (the chat model, say) -> 404;
* any other name is served by the kind's model, as chat requests are, unless ``--strict-model-id``.
"""

from __future__ import annotations

from fastapi import Request

from ..models.audio_aliases import names_source, serve_hint
from ..models.audio_worker import missing_audio_packages
from ..models.extra_models import (
    AUDIO_EXTRA_HINT,
    EMBEDDING_KIND,
    EMBEDDINGS_EXTRA_HINT,
    SPEECH_KIND,
    TRANSCRIPTION_KIND,
    ExtraModels,
    missing_embedding_packages,
)
from .errors import APIError

KIND_FLAGS = {EMBEDDING_KIND: "--embedding-model", TRANSCRIPTION_KIND: "--stt-model", SPEECH_KIND: "--tts-model"}
KIND_WORDS = {EMBEDDING_KIND: "embeddings", TRANSCRIPTION_KIND: "speech-to-text", SPEECH_KIND: "text-to-speech"}


def extra_models(raw: Request) -> ExtraModels:
    return getattr(raw.app.state, "extra_models", None) or ExtraModels()


def require_extra_installed(kind: str) -> None:
    if kind == EMBEDDING_KIND:
        missing, hint, extra = missing_embedding_packages(), EMBEDDINGS_EXTRA_HINT, "embeddings"
    else:
        missing, hint, extra = missing_audio_packages(), AUDIO_EXTRA_HINT, "audio"
    if missing:
        raise APIError(501, f"{KIND_WORDS[kind]} needs the optional '{extra}' extra, which is not installed "
                            f"(missing: {', '.join(missing)}). Install it with: {hint}",
                       code="extra_not_installed")


def require_service(raw: Request, kind: str, requested: str | None):
    """The service of ``kind`` that serves ``requested``, or the APIError saying why none does."""
    require_extra_installed(kind)
    models = extra_models(raw)
    service = {EMBEDDING_KIND: models.embedding, TRANSCRIPTION_KIND: models.transcription,
               SPEECH_KIND: models.speech}[kind]
    if service is None:
        raise APIError(404, f"this server serves no {KIND_WORDS[kind]} model; start it with "
                            f"{KIND_FLAGS[kind]} MODEL{serve_hint(requested, kind)}", param="model",
                       code="model_not_found")
    if not requested or requested == service.name or names_source(requested, getattr(service, "source", None)):
        return service
    chat_names = raw.app.state.model_registry.names()
    other_kinds = {s.name: s.kind for s in models.services() if s.kind != kind}
    if requested in chat_names or requested in other_kinds:
        what = "a chat model" if requested in chat_names else f"a {KIND_WORDS[other_kinds[requested]]} model"
        raise APIError(404, f"model {requested!r} is {what}, not a {KIND_WORDS[kind]} model; this server's "
                            f"{KIND_WORDS[kind]} model is {service.name!r}", param="model", code="model_not_found")
    if raw.app.state.config.strict_model_id:
        raise APIError(404, f"The model {requested!r} does not exist; this server's {KIND_WORDS[kind]} model is "
                            f"{service.name!r}", param="model", code="model_not_found")
    return service


def extra_model_cards(raw: Request) -> list[dict]:
    """``/v1/models`` entries of the extra models: their kind and whether they are loaded yet."""
    return [{"id": card.name, "root": card.name, "kind": card.kind, "loaded": card.loaded}
            for card in extra_models(raw).cards()]
