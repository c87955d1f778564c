"""The models served beside the chat model: at most one per kind (embedding, transcription, speech).

Each is named by ``--embedding-model`` / ``--stt-model`` / ``--tts-model`` (a local folder or a Hugging
Face repo id), checked to exist when the server starts (offline: in the cache), and loaded on its
own worker thread on first use -- or at startup with ``--preload-extra-models``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from ..options import DEFAULTS
from .audio_worker import SpeechService, TranscriptionService, missing_audio_packages, module_missing
from .embedding_worker import EmbeddingService
from ..extras import install_hint
from .loader import resolve_model_path

logger = logging.getLogger(__name__)

EMBEDDING_KIND, TRANSCRIPTION_KIND, SPEECH_KIND = "embedding", "transcription", "speech"
EMBEDDINGS_EXTRA_HINT = install_hint("embeddings")
AUDIO_EXTRA_HINT = install_hint("audio")


def missing_embedding_packages() -> list[str]:
    return ["mlx-embeddings"] if module_missing("mlx_embeddings") else []


def served_name(source: str) -> str:
    """A folder is served under its own name, a repo id as itself."""
    name = source.rstrip("/")
    return Path(name).name if Path(name).expanduser().exists() else name


@dataclass(frozen=True)
class ExtraModelCard:
    name: str
    kind: str
    loaded: bool


@dataclass
class ExtraModels:
    embedding: EmbeddingService | None = None
    transcription: TranscriptionService | None = None
    speech: SpeechService | None = None

    @classmethod
    def from_sources(cls, *, embedding: str | None = None, transcription: str | None = None,
                     speech: str | None = None, requested_dtype: str = "auto",
                     max_embedding_batch_tokens: int = DEFAULTS.max_embedding_batch_tokens) -> "ExtraModels":
        """Resolve every configured model now (fails fast with ModelNotFoundError); load nothing."""
        models = cls()
        if embedding:
            path = resolve_model_path(embedding)
            models.embedding = EmbeddingService(served_name(embedding), embedding, path,
                                                requested_dtype=requested_dtype,
                                                max_batch_tokens=max_embedding_batch_tokens)
        if transcription:
            resolve_model_path(transcription)
            models.transcription = TranscriptionService(served_name(transcription), transcription,
                                                        requested_dtype=requested_dtype)
        if speech:
            models.speech = SpeechService(served_name(speech), speech, resolve_model_path(speech))
        if embedding and missing_embedding_packages():
            logger.warning("--embedding-model is set but the embeddings extra is missing; /v1/embeddings "
                           "will answer 501. Install it with: %s", EMBEDDINGS_EXTRA_HINT)
        if (transcription or speech) and missing_audio_packages():
            logger.warning("--stt-model/--tts-model is set but the audio extra is missing (%s); /v1/audio/* "
                           "will answer 501. Install it with: %s", ", ".join(missing_audio_packages()),
                           AUDIO_EXTRA_HINT)
        return models

    def services(self) -> list[EmbeddingService | TranscriptionService | SpeechService]:
        return [s for s in (self.embedding, self.transcription, self.speech) if s is not None]

    def cards(self) -> list[ExtraModelCard]:
        return [ExtraModelCard(s.name, s.kind, s.worker.loaded) for s in self.services()]

    def stats(self) -> dict:
        return {s.kind: {"model": s.name, **s.stats()} for s in self.services()}

    async def preload(self) -> None:
        """Load every model whose extra is installed (in parallel: each on its own thread)."""
        ready = [s for s in self.services()
                 if not (missing_embedding_packages() if s.kind == EMBEDDING_KIND else missing_audio_packages())]
        await asyncio.gather(*(s.worker.preload() for s in ready))

    def shutdown(self) -> None:
        for service in self.services():
            service.worker.shutdown()
