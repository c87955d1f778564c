"""/v1/audio/* end to end: `vllm-mlx serve --stt-model --tts-model` as a real process, driven with the
openai SDK.  Both models are real mlx-audio models built here with random weights (a tiny multilingual
Whisper and a tiny Soprano), loaded through mlx-audio's normal loaders: every request runs the real
upload parsing, decoding, model and encoding path.  What the random models say is nonsense, so the
tests check shapes, formats, durations and errors, not words."""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
import openai
import pytest

pytest.importorskip("mlx_audio", reason="the 'audio' extra is not installed (pip install 'vllm-mlx[audio]')")
soundfile = pytest.importorskip("soundfile", reason="the 'audio' extra is not installed")

UPLOAD_LIMIT_MB = 0.25


@pytest.fixture(scope="module")
def tiny_whisper(models_dir):
    from vllm_mlx_testing.audio_models import build_tiny_whisper

    return build_tiny_whisper(models_dir / "tiny-whisper")


@pytest.fixture(scope="module")
def tiny_soprano(models_dir):
    from vllm_mlx_testing.audio_models import build_tiny_soprano

    return build_tiny_soprano(models_dir / "tiny-soprano")


@pytest.fixture(scope="module")
def audio_server(start_server, tiny_qwen3, tiny_whisper, tiny_soprano):
    server = start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--stt-model", tiny_whisper,
                          "--tts-model", tiny_soprano, "--max-audio-upload-mb", str(UPLOAD_LIMIT_MB),
                          "--preload-extra-models")  # (test_embeddings.py covers loading on first use)
    server.models_at_start = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    return server


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def speech_like_signal(seconds: float = 1.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    voiced = 0.25 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return (voiced + 0.05 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)




def encoded(samples: np.ndarray, rate: int, container: str, subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=container, subtype=subtype)
    return out.getvalue()


def transcribe(server, data: bytes, name: str = "speech.wav", **kw):
    kw.setdefault("temperature", 0.2)  # one decoding pass (0 = the fallback schedule, up to six)
    return client(server).audio.transcriptions.create(model="tiny-whisper", file=(name, data), **kw)


# -- listing and lazy loading ---------------------------------------------------------------------------
def test_models_list_audio_models_preloaded_with_their_kind(audio_server):
    at_start = {m["id"]: m for m in audio_server.models_at_start}
    assert at_start["tiny-qwen3"]["kind"] == "chat"
    assert at_start["tiny-whisper"]["kind"] == "transcription" and at_start["tiny-whisper"]["loaded"] is True
    assert at_start["tiny-soprano"]["kind"] == "speech" and at_start["tiny-soprano"]["loaded"] is True
    health = httpx.get(f"{audio_server.base_url}/health").json()["extra_models"]
    assert health["speech"]["load_seconds"] is not None and health["transcription"]["calls"] == 0


# -- speech -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, container, rate", [("wav", "WAV", 32000), ("flac", "FLAC", 32000),
                                                  ("mp3", "MP3", 32000), ("opus", "OGG", 48000)])
def test_speech_formats_decode(audio_server, fmt, container, rate):
    audio = client(audio_server).audio.speech.create(model="tiny-soprano", voice="alloy",
                                                     input="Hello there. How are you today?", response_format=fmt)
    info = soundfile.info(io.BytesIO(audio.content))
    samples, got_rate = soundfile.read(io.BytesIO(audio.content), dtype="float32")
    assert info.format == container and got_rate == rate
    assert samples.ndim == 1 and len(samples) > rate // 50  # mono, some sound
    assert np.abs(samples).max() > 1e-3


def test_speech_default_format_is_mp3(audio_server):
    audio = client(audio_server).audio.speech.create(model="tiny-soprano", voice="alloy", input="Hi there.")
    assert audio.response.headers["content-type"] == "audio/mpeg"
    assert soundfile.info(io.BytesIO(audio.content)).format == "MP3"


def test_speech_streams_pcm_and_wav(audio_server):
    speech = client(audio_server).audio.speech.with_streaming_response
    with speech.create(model="tiny-soprano", voice="alloy", input="Streaming words.", response_format="pcm") as r:
        assert r.headers["content-type"] == "audio/pcm"
        pcm = b"".join(r.iter_bytes())
    assert len(pcm) % 2 == 0 and len(pcm) > 0
    samples = np.frombuffer(pcm, dtype="<i2")  # 24 kHz signed 16-bit little-endian, no header
    assert np.abs(samples).max() > 0
    with speech.create(model="tiny-soprano", voice="alloy", input="Streaming words.", response_format="wav") as r:
        wav = b"".join(r.iter_bytes(chunk_size=1024))
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    decoded, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == 32000 and len(decoded) == (len(wav) - 44) // 2


def test_voices_and_speech_errors(audio_server):
    voices = httpx.get(f"{audio_server.base_url}/v1/audio/voices").json()
    assert voices["model"] == "tiny-soprano" and voices["data"] == [] and voices["any_voice_accepted"] is True
    c = client(audio_server)
    bad = [dict(speed=2.0, param="speed"),  # Soprano has no speed control: 400, not ignored
           dict(response_format="aac", param="response_format"),
           dict(response_format="ogg", param="response_format"),
           dict(input="", param="input"),
           dict(input="  \n ", param="input"),
           dict(input="x" * 4097, param="input")]
    for case in bad:
        param = case.pop("param")
        kw = {"model": "tiny-soprano", "voice": "alloy", "input": "Hello.", **case}
        with pytest.raises(openai.BadRequestError) as err:
            c.audio.speech.create(**kw)
        assert err.value.body["param"] == param, case
    with pytest.raises(openai.NotFoundError):
        c.audio.speech.create(model="tiny-whisper", voice="alloy", input="Hello.")  # not a speech model


# -- transcription and translation --------------------------------------------------------------------
def test_transcription_json_and_text(audio_server):
    wav = encoded(speech_like_signal(), 16000, "WAV", "PCM_16")
    result = transcribe(audio_server, wav)
    assert isinstance(result.text, str) and result.text.strip()
    assert result.usage.type == "duration" and result.usage.seconds == 2  # 1.5 s, rounded up
    text = transcribe(audio_server, wav, response_format="text")
    assert isinstance(text, str) and text.strip()


def test_transcription_subtitles_and_verbose_json(audio_server):
    wav = encoded(speech_like_signal(), 16000, "WAV", "PCM_16")
    srt = transcribe(audio_server, wav, response_format="srt", language="en")
    first = srt.splitlines()
    assert first[0] == "1" and " --> " in first[1] and first[1].startswith("00:00:")
    vtt = transcribe(audio_server, wav, response_format="vtt", prompt="Tiny words, tiny model.")
    assert vtt.startswith("WEBVTT\n\n00:00:")
    verbose = transcribe(audio_server, wav, response_format="verbose_json",
                         timestamp_granularities=["word", "segment"], language="fr")
    assert verbose.language == "french" and verbose.duration == pytest.approx(1.5, abs=0.01)
    assert verbose.segments and verbose.words
    assert all(0.0 <= seg.start <= seg.end <= 1.5 and isinstance(seg.tokens, list) for seg in verbose.segments)
    assert "".join(seg.text for seg in verbose.segments).strip()
    assert all(w.start <= w.end for w in verbose.words)


@pytest.mark.parametrize("name, container, subtype", [("speech.mp3", "MP3", None),
                                                      ("speech.ogg", "OGG", "OPUS"),
                                                      ("speech.flac", "FLAC", "PCM_16")])
def test_transcription_decodes_compressed_uploads(audio_server, name, container, subtype):
    rate = 48000 if subtype == "OPUS" else 44100
    data = encoded(speech_like_signal(rate=rate), rate, container, subtype)
    verbose = transcribe(audio_server, data, name, response_format="verbose_json")
    assert verbose.duration == pytest.approx(1.5, abs=0.06)  # decoded and resampled to 16 kHz


def test_speech_to_transcription_round_trip(audio_server):
    wav = client(audio_server).audio.speech.create(model="tiny-soprano", voice="alloy",
                                                   input="A short sentence.", response_format="wav").content
    seconds = (len(wav) - 44) / 2 / 32000
    verbose = transcribe(audio_server, wav, response_format="verbose_json")
    assert verbose.duration == pytest.approx(seconds, abs=0.01)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations so
def test_translation(audio_server):
    wav = encoded(speech_like_signal(), 16000, "WAV", "PCM_16")
    c = client(audio_server)
    result = c.audio.translations.create(model="tiny-whisper", file=("speech.wav", wav), temperature=0.2)
    assert isinstance(result.text, str)
    verbose = c.audio.translations.create(model="tiny-whisper", file=("speech.wav", wav),
                                          response_format="verbose_json", temperature=0.2)
    assert verbose.task == "translate" and verbose.language == "english"


def test_transcription_errors(audio_server):
    c = client(audio_server)
    with pytest.raises(openai.BadRequestError) as err:
        transcribe(audio_server, b"this is not audio at all" * 10, "notes.wav")
    assert err.value.body["code"] == "invalid_audio" and err.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as err:
        transcribe(audio_server, encoded(speech_like_signal(), 16000, "WAV"), response_format="json",
                   timestamp_granularities=["word"])
    assert err.value.body["param"] == "timestamp_granularities"
    with pytest.raises(openai.BadRequestError) as err:
        transcribe(audio_server, encoded(speech_like_signal(), 16000, "WAV"), response_format="docx")
    assert err.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as err:
        transcribe(audio_server, encoded(speech_like_signal(), 16000, "WAV"), language="klingon")
    assert err.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError) as err:  # known OpenAI field, not implemented: never ignored
        transcribe(audio_server, encoded(speech_like_signal(), 16000, "WAV"), include=["logprobs"])
    assert err.value.body["param"] == "include"
    with pytest.raises(openai.NotFoundError):  # the chat model does not transcribe
        c.audio.transcriptions.create(model="tiny-qwen3", file=("a.wav", encoded(speech_like_signal(), 16000, "WAV")))
    no_file = httpx.post(f"{audio_server.base_url}/v1/audio/transcriptions",
                         data={"model": "tiny-whisper"}, files={"other": ("a.txt", b"x")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    too_big = encoded(speech_like_signal(seconds=10.0), 16000, "WAV", "PCM_16")  # 320 kB > 0.25 MiB
    with pytest.raises(openai.APIStatusError) as err:
        transcribe(audio_server, too_big)
    assert err.value.status_code == 413 and err.value.body["code"] == "upload_too_large"


# -- without the extra --------------------------------------------------------------------------------
HIDE_EXTRAS = """
import sys
# Make the optional extras look uninstalled: importlib.util.find_spec() returns None for these names.
for name in ("mlx_audio", "mlx_embeddings", "soundfile", "python_multipart", "multipart"):
    sys.modules[name] = None
"""


def test_routes_answer_501_without_the_extras(start_server, tiny_qwen3, tiny_whisper, tiny_soprano, tmp_path):
    from vllm_mlx_testing.embedding_models import build_tiny_bert

    (tmp_path / "sitecustomize.py").write_text(HIDE_EXTRAS)
    bert = build_tiny_bert(tmp_path / "tiny-bert")
    server = start_server(tiny_qwen3, "--stt-model", tiny_whisper, "--tts-model", tiny_soprano,
                          "--embedding-model", bert,
                          env={"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))})
    c = client(server)
    calls = {
        "audio": lambda: c.audio.transcriptions.create(model="tiny-whisper", file=("a.wav", b"RIFF")),
        "speech": lambda: c.audio.speech.create(model="tiny-soprano", voice="alloy", input="Hi."),
        "embeddings": lambda: c.embeddings.create(model="tiny-bert", input="Hi."),
    }
    for extra, call in calls.items():
        with pytest.raises(openai.APIStatusError) as err:
            call()
        assert err.value.status_code == 501 and err.value.body["code"] == "extra_not_installed"
        message = err.value.body["message"]
        assert f"'{extra if extra != 'speech' else 'audio'}' extra" in message
        assert "scripts/dev.sh install full" in message  # served from this clone: the clone's command
    assert "audio extra is missing" in server.log()
    ids = [m.id for m in c.models.list().data]  # still listed, with their kind
    assert ids == ["tiny-qwen3", "tiny-bert", "tiny-whisper", "tiny-soprano"]
    assert json.loads(httpx.get(f"{server.base_url}/health").text)["status"] == "ok"


# -- pure helpers (in process) ---------------------------------------------------------------------
def test_subtitle_formats():
    from vllm_mlx.api.audio_formats import srt, vtt

    segments = [{"start": 0.0, "end": 1.25, "text": " Hello"}, {"start": 61.5, "end": 3723.007, "text": "world "}]
    assert srt(segments) == ("1\n00:00:00,000 --> 00:00:01,250\nHello\n\n"
                             "2\n00:01:01,500 --> 01:02:03,007\nworld\n")
    assert vtt(segments) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello\n\n"
                             "00:01:01.500 --> 01:02:03.007\nworld\n")


def test_voice_files_are_listed_and_checked(tmp_path):
    from vllm_mlx.models.audio_worker import AudioOptionError, SpeechService

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "voices").mkdir()
    for name in ("af_heart.safetensors", "bm_lewis.pt", "notes.txt"):
        (tmp_path / "voices" / name).write_bytes(b"")
    service = SpeechService("kokoro-like", str(tmp_path), tmp_path)
    assert service.voices == ["af_heart", "bm_lewis"]
    service.check_voice("bm_lewis")
    with pytest.raises(AudioOptionError, match="af_heart, bm_lewis"):
        service.check_voice("alloy")
    service.worker.shutdown()


@pytest.mark.parametrize("kind", ["stt", "tts"])
def test_tiny_models_are_complete_checkpoints(kind, tiny_whisper, tiny_soprano):
    """mlx-audio loads with strict=False, so a parameter missing from the files would silently stay
    random: every parameter of the built model must come from model.safetensors, with its shape."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if kind == "stt":
        from mlx_audio.stt import load
        path = tiny_whisper
    else:
        from mlx_audio.tts import load
        path = tiny_soprano
    model = load(str(path))
    stored = model.sanitize(mx.load(str(path / "model.safetensors")))
    params = dict(tree_flatten(model.parameters()))
    assert set(params) == set(stored)
    assert all(params[k].shape == stored[k].shape for k in params)
