"""OpenAI audio routes: transcriptions, translations, speech, plus ``GET /v1/audio/voices``.

Uploads are the multipart form the openai SDK sends (``file``, ``model``, ``language``, ``prompt``,
``response_format``, ``temperature``, ``timestamp_granularities[]``), read through a size-bounded
stream (``--max-audio-upload-mb``; 413 past it); their header is checked against
``--max-audio-seconds`` and ``--min-audio-sample-rate`` before they are decoded (media/audio.py).  Speech takes the SDK's
JSON body and answers with the encoded audio; ``pcm`` and ``wav`` are streamed segment by segment.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import Field

from ..models.audio_worker import (
    AudioOptionError,
    SpeechOptions,
    SpeechSegment,
    SpeechService,
    Transcript,
    TranscriptionOptions,
    TranscriptionService,
    resample,
)
from ..media.audio import AudioDecodeError, AudioLimitError, AudioLimits, check_header, decode_mono, read_header
from ..models.extra_models import SPEECH_KIND, TRANSCRIPTION_KIND
from ..models.model_worker import ModelLoadError
from . import audio_formats
from .errors import APIError
from .extra_model_access import require_service
from .protocol import OpenAIRequest

logger = logging.getLogger(__name__)

router = APIRouter()

TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FORM_FIELDS = {"file", "model", "prompt", "response_format", "temperature"}
TRANSCRIPTION_ONLY_FIELDS = {"language", "timestamp_granularities[]", "timestamp_granularities", "stream"}
# OpenAI fields of the newer transcription models that this server cannot honour: 400, not ignored
UNSUPPORTED_FIELDS = {"include[]": "include", "include": "include", "chunking_strategy": "chunking_strategy",
                      "known_speaker_names[]": "known_speaker_names",
                      "known_speaker_references[]": "known_speaker_references"}
ROUTES = {"transcribe": "/v1/audio/transcriptions", "translate": "/v1/audio/translations"}
MAX_SPEECH_INPUT_CHARS = 4096
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024


class _UploadTooLarge(Exception):
    pass


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _UploadTooLarge()
        yield chunk


async def read_upload_form(raw: Request) -> tuple[dict[str, list[str]], bytes, str | None]:
    """(text fields, the ``file`` bytes, its file name) of a multipart upload, at most the size limit."""
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.datastructures import UploadFile

    limit = int(getattr(raw.app.state.config, "max_audio_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES))
    too_large = APIError(413, f"the upload exceeds this server's limit of {limit / 2**20:g} MiB "
                              "(--max-audio-upload-mb)", param="file", code="upload_too_large")
    if not raw.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "expected a multipart/form-data upload with a 'file' field", param="file")
    declared = raw.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise too_large
    parser = MultiPartParser(raw.headers, _bounded(raw.stream(), limit + 64 * 1024), max_files=1, max_fields=64)
    try:
        form = await parser.parse()
    except _UploadTooLarge:
        raise too_large from None
    except MultiPartException as exc:
        raise APIError(400, f"malformed multipart upload: {exc.message}", param="file")
    try:
        fields: dict[str, list[str]] = {}
        upload: UploadFile | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == "file":
                    upload = value
                continue
            fields.setdefault(key, []).append(value)
        if upload is None:
            raise APIError(400, "the form has no 'file' field holding the audio", param="file")
        data = await upload.read()
        if len(data) > limit:
            raise too_large
        return fields, data, upload.filename
    finally:
        await form.close()


def _field(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[-1] if values else None


def _transcription_options(fields: dict[str, list[str]], task: str) -> tuple[TranscriptionOptions, str, set[str]]:
    for name, param in UNSUPPORTED_FIELDS.items():
        if name in fields:
            raise APIError(400, f"'{param}' is not supported by this server", param=param)
    known = FORM_FIELDS | (TRANSCRIPTION_ONLY_FIELDS if task == "transcribe" else set())
    unknown = sorted(set(fields) - known)
    if unknown:
        logger.warning("%s: ignoring unknown field(s) %s", ROUTES[task], unknown)
    fmt = _field(fields, "response_format") or "json"
    if fmt not in TRANSCRIPT_FORMATS:
        raise APIError(400, f"'response_format' must be one of {', '.join(TRANSCRIPT_FORMATS)}",
                       param="response_format")
    if task == "transcribe" and (_field(fields, "stream") or "false").lower() == "true":
        raise APIError(400, "streamed transcriptions are not supported; omit 'stream'", param="stream")
    temperature = _field(fields, "temperature")
    try:
        temp = float(temperature) if temperature not in (None, "") else None
    except ValueError:
        raise APIError(400, "'temperature' must be a number", param="temperature")
    if temp is not None and not 0.0 <= temp <= 1.0:
        raise APIError(400, "'temperature' must lie in [0, 1]", param="temperature")
    granularities = set(fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", []))
    if task == "translate":
        granularities = set()  # not a translations field (ignored above with a warning)
    if granularities - {"word", "segment"}:
        raise APIError(400, "'timestamp_granularities' takes 'word' and/or 'segment'",
                       param="timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise APIError(400, "'timestamp_granularities' needs response_format 'verbose_json'",
                       param="timestamp_granularities")
    language = _field(fields, "language") if task == "transcribe" else None
    options = TranscriptionOptions(task=task, language=language or None, prompt=_field(fields, "prompt") or None,
                                   temperature=temp, word_timestamps="word" in granularities)
    return options, fmt, granularities


def _language_name(code: str | None) -> str | None:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code) if code else None


def transcript_response(t: Transcript, fmt: str, granularities: set[str]) -> Response:
    if fmt == "text":
        return PlainTextResponse(t.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(audio_formats.srt(t.segments))
    if fmt == "vtt":
        return PlainTextResponse(audio_formats.vtt(t.segments), media_type="text/vtt")
    usage = {"type": "duration", "seconds": int(np.ceil(t.duration))}
    if fmt == "json":
        return JSONResponse({"text": t.text, "usage": usage})
    body: dict[str, Any] = {"task": t.task, "language": _language_name(t.language) if t.task == "transcribe"
                            else "english", "duration": round(t.duration, 3), "text": t.text}
    if not granularities or "segment" in granularities:
        body["segments"] = t.segments
    if "word" in granularities:
        body["words"] = t.words
    body["usage"] = usage
    return JSONResponse(body)


async def _transcribe(raw: Request, task: str) -> Response:
    fields, data, filename = await read_upload_form(raw)
    service: TranscriptionService = require_service(raw, TRANSCRIPTION_KIND, _field(fields, "model"))
    options, fmt, granularities = _transcription_options(fields, task)
    label = repr(filename) if filename else "the uploaded file"
    limits = getattr(raw.app.state.config, "audio_limits", None) or AudioLimits()
    try:  # the header only: rate, channels, length -- refused here before any decoding
        header = read_header(data, label)
        check_header(header, limits)
        # decoded (block by block, within the header's promise) and resampled on the model's worker thread
        transcript = await service.transcribe_file(lambda: decode_mono(data, header, limits, label), options)
    except AudioDecodeError as exc:
        raise APIError(400, str(exc), param="file", code="invalid_audio")
    except AudioLimitError as exc:
        raise APIError(400, str(exc), param="file", code=exc.code)
    except AudioOptionError as exc:
        raise APIError(400, str(exc), param=exc.param)
    except ModelLoadError as exc:
        raise APIError(500, str(exc), code="model_load_error")
    return transcript_response(transcript, fmt, granularities)


@router.post("/v1/audio/transcriptions")
async def create_transcription(raw: Request):
    require_service(raw, TRANSCRIPTION_KIND, None)  # 501/404 before reading the upload
    return await _transcribe(raw, "transcribe")


@router.post("/v1/audio/translations")
async def create_translation(raw: Request):
    require_service(raw, TRANSCRIPTION_KIND, None)
    return await _transcribe(raw, "translate")


# -- speech -----------------------------------------------------------------------------------------
class SpeechVoice(OpenAIRequest):
    id: str


class SpeechRequest(OpenAIRequest):
    model: str = "default"
    input: str = Field(min_length=1, max_length=MAX_SPEECH_INPUT_CHARS)
    voice: str | SpeechVoice | None = None
    instructions: str | None = None
    response_format: str = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


def _check_speech_request(req: SpeechRequest) -> str:
    if not req.input.strip():
        raise APIError(400, "'input' holds no text to speak", param="input")
    fmt = req.response_format
    if fmt in audio_formats.UNSUPPORTED_SPEECH_FORMATS:
        raise APIError(400, f"response_format '{fmt}' is not supported here "
                            f"({audio_formats.UNSUPPORTED_SPEECH_FORMATS[fmt]}); use one of "
                            f"{', '.join(audio_formats.SPEECH_FORMATS)}", param="response_format")
    if fmt not in audio_formats.SPEECH_FORMATS:
        raise APIError(400, f"'response_format' must be one of {', '.join(audio_formats.SPEECH_FORMATS)}",
                       param="response_format")
    if req.stream_format == "sse":
        raise APIError(400, "stream_format 'sse' is not supported; use 'audio' (pcm and wav stream as they "
                            "are made)", param="stream_format")
    return fmt


def _to_output_rate(segment: SpeechSegment, fmt: str) -> tuple[np.ndarray, int]:
    rate = audio_formats.speech_output_rate(fmt, segment.sample_rate)
    return resample(segment.samples, segment.sample_rate, rate), rate


async def _first_segment(stream: AsyncIterator[SpeechSegment]) -> SpeechSegment | None:
    """The first segment, so a bad option or a failed load is still an HTTP error, not a cut stream."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except AudioOptionError as exc:
        raise APIError(400, str(exc), param=exc.param)
    except ModelLoadError as exc:
        raise APIError(500, str(exc), code="model_load_error")


async def _streamed_audio(first: SpeechSegment, rest: AsyncIterator[SpeechSegment], fmt: str) -> AsyncIterator[bytes]:
    try:
        samples, rate = _to_output_rate(first, fmt)
        if fmt == "wav":
            yield audio_formats.wav_stream_header(rate)
        yield audio_formats.pcm16(samples)
        async for segment in rest:
            yield audio_formats.pcm16(_to_output_rate(segment, fmt)[0])
    finally:
        await rest.aclose()


@router.post("/v1/audio/speech")
async def create_speech(req: SpeechRequest, raw: Request):
    service: SpeechService = require_service(raw, SPEECH_KIND, req.model)
    if req.model_extra:
        logger.warning("/v1/audio/speech: ignoring unknown field(s) %s", sorted(req.model_extra))
    fmt = _check_speech_request(req)
    voice = req.voice.id if isinstance(req.voice, SpeechVoice) else req.voice
    try:
        service.check_voice(voice)
    except AudioOptionError as exc:
        raise APIError(400, str(exc), param=exc.param)
    stream = service.synthesize(SpeechOptions(text=req.input, voice=voice, speed=req.speed,
                                              instructions=req.instructions))
    first = await _first_segment(stream)
    if first is None:
        raise APIError(500, "the text-to-speech model produced no audio", code="no_audio")
    media_type = audio_formats.SPEECH_FORMATS[fmt][0]
    if fmt in audio_formats.STREAMED_FORMATS:
        return StreamingResponse(_streamed_audio(first, stream, fmt), media_type=media_type)
    segments = [first] + [s async for s in stream]
    samples, rate = _to_output_rate(SpeechSegment(np.concatenate([s.samples for s in segments]),
                                                  first.sample_rate), fmt)
    return Response(audio_formats.encode_speech(samples, rate, fmt), media_type=media_type)


@router.get("/v1/audio/voices")
async def list_voices(raw: Request, model: str | None = None):
    service: SpeechService = require_service(raw, SPEECH_KIND, model)
    return JSONResponse({
        "object": "list",
        "model": service.name,
        "data": [{"id": v, "object": "voice", "name": v} for v in service.voices],
        "any_voice_accepted": not service.voices,  # single-voice models take any 'voice' and ignore it
    })
