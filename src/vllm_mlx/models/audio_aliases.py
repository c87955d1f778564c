"""Short audio model names of the earlier vllm-mlx 0.2.x (``whisper-large-v3``, ``kokoro`` ...).

Here an audio model is served with ``--stt-model`` / ``--tts-model`` (a folder or a repo id). A short
name given to those flags is mapped to its repo id; a short name whose model is not known here is
refused with what to pass instead; a request naming one while no model of its kind is served gets a
404 that says which flag serves it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

STT, TTS = "transcription", "speech"  # the kinds of models.extra_models
FLAGS = MappingProxyType({STT: "--stt-model", TTS: "--tts-model"})

AUDIO_ALIASES: Mapping[str, tuple[str, str]] = MappingProxyType({  # name -> (kind, repo id)
    "whisper-large-v3": (STT, "mlx-community/whisper-large-v3-mlx"),
    "whisper-large-v3-turbo": (STT, "mlx-community/whisper-large-v3-turbo"),
    "whisper-medium": (STT, "mlx-community/whisper-medium-mlx"),
    "whisper-small": (STT, "mlx-community/whisper-small-mlx"),
    "parakeet": (STT, "mlx-community/parakeet-tdt-0.6b-v2"),
    "parakeet-v3": (STT, "mlx-community/parakeet-tdt-0.6b-v3"),
    "kokoro": (TTS, "mlx-community/Kokoro-82M-bf16"),
    "kokoro-4bit": (TTS, "mlx-community/Kokoro-82M-4bit"),
})
# names whose model has no checked repo id here: pass the model's own folder or repo id
UNMAPPED: Mapping[str, str] = MappingProxyType({"chatterbox": TTS, "vibevoice": TTS, "voxcpm": TTS})


def kind_of(name: str) -> str | None:
    key = name.strip().lower()
    return AUDIO_ALIASES[key][0] if key in AUDIO_ALIASES else UNMAPPED.get(key)


def audio_model(value: str, kind: str) -> str:
    """The repo id for a short name given to ``FLAGS[kind]``; other values unchanged; ValueError for a
    short name of the other kind or one not mapped here."""
    key = value.strip().lower()
    found = kind_of(key)
    if found is None:
        return value
    if found != kind:
        raise ValueError(f"{value!r} is a {'speech-to-text' if found == STT else 'text-to-speech'} model: "
                         f"give it to {FLAGS[found]}")
    if key in UNMAPPED:
        raise ValueError(f"the short name {value!r} (vllm-mlx 0.2.x) is not mapped here: pass the model's folder "
                         f"or repo id")
    return AUDIO_ALIASES[key][1]


def names_source(name: str | None, source: str) -> bool:
    """Whether a request's model ``name`` is the short name of ``source`` (a request for whisper-large-v3
    to a server started with --stt-model whisper-large-v3, which serves the repo id)."""
    entry = AUDIO_ALIASES.get((name or "").strip().lower())
    return entry is not None and entry[1] == source


EXAMPLES = MappingProxyType({STT: "whisper-large-v3", TTS: "kokoro"})


def serve_hint(requested: str | None, kind: str | None = None) -> str:
    """For the 404 of a request whose kind of model is not served: the flag that would serve it (for a
    short name of 0.2.x: with its repo id; for an audio kind: that short names are mapped)."""
    if kind_of(requested or "") is None:
        return f" (a folder or repo id; short names such as {EXAMPLES[kind]} are mapped)" if kind in EXAMPLES else ""
    kind = kind_of(requested or "")
    if kind is None:
        return ""
    target = AUDIO_ALIASES[requested.strip().lower()][1] if requested.strip().lower() in AUDIO_ALIASES \
        else "its folder or repo id"
    return f" ({requested!r} is a name of vllm-mlx 0.2.x: start the server with {FLAGS[kind]} {target})"
