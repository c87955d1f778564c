"""Speech-to-text and text-to-speech models through mlx-audio, each on its own worker thread.

* :class:`TranscriptionService` -- ``mlx_audio.stt.load`` and the model's ``generate(audio, ...)``;
  used for transcriptions (``task="transcribe"``) and translations (``task="translate"``).
* :class:`SpeechService` -- ``mlx_audio.tts.load`` and the model's ``generate(text=..., ...)``, whose
  segments are handed to the asyncio side one by one as they are made (streaming).

Options a request sets are passed only to a model whose ``generate`` names them; asking a model for
one it does not take (``speed`` of a model without speed control, translation of a model without a
``task``) is an :class:`AudioOptionError`, answered 400 -- never silently dropped.
mlx-audio is an optional extra: nothing here imports it before a model is loaded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np

from .model_worker import ModelWorker

logger = logging.getLogger(__name__)

STT_SAMPLE_RATE = 16000  # what Whisper and nearly every mlx-audio STT model expects
VOICE_FILE_SUFFIXES = (".safetensors", ".pt", ".npy", ".bin", ".wav")
AUDIO_EXTRA_MODULES = {"mlx_audio": "mlx-audio", "soundfile": "soundfile", "python_multipart": "python-multipart"}


def module_missing(module: str) -> bool:
    """True when ``module`` cannot be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def missing_audio_packages() -> list[str]:
    """Packages of the ``audio`` extra that are not installed (empty when it is usable)."""
    return [pkg for module, pkg in AUDIO_EXTRA_MODULES.items() if module_missing(module)]


class AudioOptionError(ValueError):
    """The request asks the model for something it cannot do; the API answers 400."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def explicit_parameters(fn: Any) -> set[str]:
    """Names a callable declares (``**kwargs`` does not count as support)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def is_whisper(model: Any) -> bool:
    return type(model).__module__.startswith("mlx_audio.stt.models.whisper")


def whisper_language_code(language: str) -> str:
    """An ISO-639-1 code (``en``) or English name (``english``) as Whisper's code; else AudioOptionError."""
    from mlx_audio.stt.models.whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    lowered = language.strip().lower()
    if lowered in LANGUAGES:
        return lowered
    if lowered in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lowered]
    raise AudioOptionError(f"unknown language {language!r}; give an ISO-639-1 code such as 'en' or 'fr'",
                           param="language")


def _load_stt(source: str, requested_dtype: str) -> Any:
    """mlx-audio's STT loader.  Whisper (built float16 by mlx-audio) follows ``--dtype`` as the chat
    model does: ``auto`` on the CPU backend casts its weights to float32, where matmuls are fast."""
    import mlx.core as mx
    from mlx_audio.stt import load

    from .. import BLAS_STATUS
    from ..platform import detect_backend
    from .loader import cast_floating_weights

    model = load(source)
    compute_dtype = detect_backend(BLAS_STATUS, requested_dtype).compute_dtype
    if is_whisper(model) and compute_dtype in ("float32", "float16", "bfloat16"):
        cast_floating_weights(model, getattr(mx, compute_dtype))
        model.dtype = getattr(mx, compute_dtype)
        mx.eval(model.parameters())
    return model


def _load_tts(source: str) -> Any:
    from mlx_audio.tts import load

    return load(source)


# -- speech to text ---------------------------------------------------------------------------------
@dataclass
class TranscriptionOptions:
    task: str = "transcribe"  # or "translate"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None  # None or 0: the model's own fallback schedule
    word_timestamps: bool = False


@dataclass
class Transcript:
    text: str
    language: str | None
    duration: float
    task: str
    segments: list[dict] = field(default_factory=list)  # start, end, text, tokens, temperature, ...
    words: list[dict] = field(default_factory=list)  # word, start, end


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """mlx-audio's Kaiser-windowed polyphase resampler (numpy in, numpy out)."""
    if rate == target:
        return samples
    from mlx_audio.utils import resample_audio

    return np.asarray(resample_audio(samples, rate, target, axis=0), dtype=np.float32)


def transcription_kwargs(model: Any, options: TranscriptionOptions) -> dict[str, Any]:
    """The ``generate`` keyword arguments for ``options``; raises AudioOptionError for unsupported ones."""
    names = explicit_parameters(model.generate)
    kwargs: dict[str, Any] = {}
    if "verbose" in names:
        kwargs["verbose"] = None
    if is_whisper(model):  # its decoder checks the encoder's output dtype against this option
        import mlx.core as mx

        kwargs["fp16"] = model.dtype == mx.float16
    if options.task == "translate":
        if "task" not in names:
            raise AudioOptionError("this speech-to-text model does not translate", param="model")
        kwargs["task"] = "translate"
    if options.language:
        if "language" not in names:
            raise AudioOptionError("this speech-to-text model takes no 'language'", param="language")
        kwargs["language"] = whisper_language_code(options.language) if is_whisper(model) else options.language
    if options.prompt:
        prompt_param = next((n for n in ("initial_prompt", "prompt", "context") if n in names), None)
        if prompt_param is None:
            raise AudioOptionError("this speech-to-text model takes no 'prompt'", param="prompt")
        kwargs[prompt_param] = options.prompt
    if options.temperature:
        if "temperature" not in names:
            raise AudioOptionError("this speech-to-text model takes no 'temperature'", param="temperature")
        kwargs["temperature"] = float(options.temperature)
    if options.word_timestamps:
        if "word_timestamps" not in names:
            raise AudioOptionError("this speech-to-text model gives no word timestamps",
                                   param="timestamp_granularities")
        kwargs["word_timestamps"] = True
    return kwargs


def run_transcription(model: Any, samples: np.ndarray, rate: int, options: TranscriptionOptions) -> Transcript:
    """On the worker thread: resample to the model's rate and run its ``generate``."""
    import mlx.core as mx

    target = int(getattr(model, "sample_rate", None) or STT_SAMPLE_RATE)
    audio = resample(samples, rate, target)
    result = model.generate(mx.array(audio), **transcription_kwargs(model, options))
    duration = len(audio) / target
    segments = [_plain_segment(i, s) for i, s in enumerate(getattr(result, "segments", None) or [])]
    text = (getattr(result, "text", "") or "").strip()
    if not segments and text:
        segments = [{"id": 0, "start": 0.0, "end": round(duration, 3), "text": text}]
    words = [w for s in segments for w in s.pop("words", [])]
    language = getattr(result, "language", None) or options.language
    return Transcript(text=text, language=language if isinstance(language, str) else None,
                      duration=duration, task=options.task, segments=segments, words=words)


def _decode_and_transcribe(model: Any, decode: Callable[[], tuple[np.ndarray, int]],
                           options: TranscriptionOptions) -> Transcript:
    samples, rate = decode()
    return run_transcription(model, samples, rate, options)


def _plain_segment(index: int, segment: Any) -> dict:
    s = segment if isinstance(segment, dict) else vars(segment)
    out = {"id": s.get("id", index), "seek": s.get("seek", 0), "start": float(s.get("start", 0.0)),
           "end": float(s.get("end", 0.0)), "text": str(s.get("text", ""))}
    for key in ("tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
        if key in s:
            value = s[key]
            out[key] = [int(t) for t in value] if key == "tokens" else _finite(value)
    out["words"] = [{"word": str(w.get("word", "")), "start": float(w.get("start", 0.0)),
                     "end": float(w.get("end", 0.0))} for w in s.get("words", None) or []]
    return out


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


class TranscriptionService:
    kind = "transcription"

    def __init__(self, name: str, source: str, *, requested_dtype: str = "auto"):
        self.name = name
        self.source = source
        self.worker = ModelWorker(self.kind, name, lambda: _load_stt(source, requested_dtype))

    async def transcribe(self, samples: np.ndarray, rate: int, options: TranscriptionOptions) -> Transcript:
        return await self.worker.run(run_transcription, samples, rate, options)

    async def transcribe_file(self, decode: Callable[[], tuple[np.ndarray, int]],
                              options: TranscriptionOptions) -> Transcript:
        """``decode()`` (an upload's samples and rate) and the transcription, both on the worker thread:
        decoding and resampling never hold the event loop, and run one upload at a time."""
        return await self.worker.run(_decode_and_transcribe, decode, options)

    def stats(self) -> dict:
        return vars(self.worker.stats())


# -- text to speech ---------------------------------------------------------------------------------
@dataclass
class SpeechOptions:
    text: str
    voice: str | None = None
    speed: float = 1.0
    instructions: str | None = None


@dataclass
class SpeechSegment:
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int


def speech_kwargs(model: Any, options: SpeechOptions) -> dict[str, Any]:
    names = explicit_parameters(model.generate)
    kwargs: dict[str, Any] = {"text": options.text}
    if "verbose" in names:
        kwargs["verbose"] = False
    if options.voice and "voice" in names:  # single-voice models (Soprano) take it and ignore it
        kwargs["voice"] = options.voice
    if options.speed != 1.0:
        if "speed" not in names:
            raise AudioOptionError("this text-to-speech model has no speed control; use speed 1.0", param="speed")
        kwargs["speed"] = options.speed
    if options.instructions:
        instruct = next((n for n in ("instructions", "instruct") if n in names), None)
        if instruct is None:
            raise AudioOptionError("this text-to-speech model takes no 'instructions'", param="instructions")
        kwargs[instruct] = options.instructions
    return kwargs


def list_voice_files(model_path: Path) -> list[str]:
    """Voices shipped as files in the model folder (``voices/<name>.<ext>``, Kokoro style)."""
    folder = model_path / "voices"
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in VOICE_FILE_SUFFIXES})


class SpeechService:
    kind = "speech"

    def __init__(self, name: str, source: str, model_path: Path):
        self.name = name
        self.source = source
        self.voices = list_voice_files(model_path)
        self.worker = ModelWorker(self.kind, name, lambda: _load_tts(source))

    def check_voice(self, voice: str | None) -> None:
        if self.voices and voice not in self.voices:
            shown = ", ".join(self.voices[:20]) + (" ..." if len(self.voices) > 20 else "")
            raise AudioOptionError(f"voice {voice!r} is not one of this model's voices: {shown}", param="voice")

    async def synthesize(self, options: SpeechOptions) -> AsyncIterator[SpeechSegment]:
        """Yield audio segments as the worker thread makes them; closing the iterator stops the model."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item: tuple) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (server shutting down)
                pass

        def produce(model: Any) -> None:
            kwargs = speech_kwargs(model, options)
            for result in model.generate(**kwargs):
                if stop.is_set():
                    break
                samples = np.asarray(result.audio, dtype=np.float32).reshape(-1)
                put(("segment", SpeechSegment(samples, int(getattr(result, "sample_rate", None) or model.sample_rate))))

        def finished(future) -> None:
            error = None if future.cancelled() else future.exception()
            put(("end", error))

        self.worker.submit(produce).add_done_callback(finished)
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "end":
                    if payload is not None:
                        raise payload
                    return
                yield payload
        finally:
            stop.set()

    def stats(self) -> dict:
        return vars(self.worker.stats())
