"""Audio on the wire: encoding speech, and transcript formats (text, srt, vtt).

Encoding goes through soundfile (libsndfile 1.2), which comes with the ``audio`` extra and is imported
on first use. Uploads are read, bounded and decoded by media/audio.py.
"""

from __future__ import annotations

import io
import struct

import numpy as np

# response_format -> (media type, libsndfile container, subtype)
SPEECH_FORMATS: dict[str, tuple[str, str | None, str | None]] = {
    "wav": ("audio/wav", "WAV", "PCM_16"),
    "flac": ("audio/flac", "FLAC", "PCM_16"),
    "mp3": ("audio/mpeg", "MP3", "MPEG_LAYER_III"),
    "opus": ("audio/ogg", "OGG", "OPUS"),
    "pcm": ("audio/pcm", None, None),  # raw signed 16-bit little-endian mono at PCM_SAMPLE_RATE
}
UNSUPPORTED_SPEECH_FORMATS = {"aac": "libsndfile has no AAC encoder"}
PCM_SAMPLE_RATE = 24000  # OpenAI's pcm format: 24 kHz, 16-bit signed little-endian, no header
OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
STREAMED_FORMATS = ("pcm", "wav")  # sent as segments are made; the others once encoded whole


def pcm16(samples: np.ndarray) -> bytes:
    """Signed 16-bit little-endian PCM of float samples in [-1, 1]."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say 'unknown' (0xFFFFFFFF), for streaming."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


def speech_output_rate(fmt: str, model_rate: int) -> int:
    """The sample rate a response in ``fmt`` is sent at (pcm is fixed; Opus allows a few rates)."""
    if fmt == "pcm":
        return PCM_SAMPLE_RATE
    if fmt == "opus" and model_rate not in OPUS_SAMPLE_RATES:
        return 48000
    return model_rate


def encode_speech(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode float mono samples (already at ``speech_output_rate``) as a whole file in ``fmt``."""
    if fmt == "pcm":
        return pcm16(samples)
    import soundfile

    _, container, subtype = SPEECH_FORMATS[fmt]
    out = io.BytesIO()
    soundfile.write(out, np.clip(samples, -1.0, 1.0), sample_rate, format=container, subtype=subtype)
    return out.getvalue()


# -- transcripts ------------------------------------------------------------------------------------
def _clock(seconds: float, decimal: str) -> str:
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: list[dict]) -> str:
    blocks = [f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text'].strip()}\n"
              for i, s in enumerate(segments, start=1)]
    return "\n".join(blocks)


def vtt(segments: list[dict]) -> str:
    blocks = [f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text'].strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
