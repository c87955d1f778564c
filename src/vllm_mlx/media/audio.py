"""Audio uploads bounded before they are decoded: the header first, then a decode that cannot outgrow it.

An upload's size says little about what it decodes to: a 3 KB WAV whose header says 1 Hz is 25 minutes
of audio once resampled, a few MB of FLAC can hold an hour of 8-channel 96 kHz samples. So:

1. :func:`read_header` reads sample rate, channels and length from the container's header -- libsndfile
   (WAV, FLAC, Ogg, MP3, AIFF, ...) or PyAV (m4a/mp4/webm) -- without decoding;
2. :func:`check_header` refuses a rate below ``min_sample_rate``, a duration above ``max_seconds`` and
   more samples (frames x channels) than ``max_seconds`` of 48 kHz stereo;
3. :func:`decode_mono` decodes block by block, down-mixing each block to mono at once, and stops as
   soon as the samples pass the header's promise (a header that lies gains nothing). It runs on the
   transcription model's worker thread, never on the event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..options import DEFAULTS as D

BLOCK_FRAMES = 1 << 16
UNKNOWN_FRAMES = 1 << 62  # what libsndfile reports for a stream of unknown length (or near it)
SAMPLES_RATE_BOUND = 48000 * 2  # samples per second of audio the decoder may read: 48 kHz stereo
UPLOAD_FORMATS_HINT = "wav, flac, mp3, ogg (Vorbis or Opus), aiff; m4a/mp4/webm with PyAV installed"


class AudioDecodeError(ValueError):
    """The upload is not audio we can decode; the API answers 400 invalid_audio."""


class AudioLimitError(ValueError):
    """The upload is audio, but beyond a limit; the API answers 400 naming the limit."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float = D.max_audio_seconds
    min_sample_rate: int = D.min_audio_sample_rate

    @property
    def max_samples(self) -> int:
        return int(self.max_seconds * SAMPLES_RATE_BOUND)


@dataclass(frozen=True)
class AudioHeader:
    reader: str  # "soundfile" or "av"
    sample_rate: int
    channels: int
    frames: int | None  # None: the header does not say

    @property
    def seconds(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate


def read_header(data: bytes, label: str = "the uploaded file") -> AudioHeader:
    """Rate, channels and length from the container's header (nothing is decoded)."""
    if not data:
        raise AudioDecodeError(f"{label} is empty")
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))
        frames = int(info.frames)
        return AudioHeader("soundfile", int(info.samplerate), int(info.channels),
                           frames if 0 <= frames < UNKNOWN_FRAMES else None)
    except Exception as libsndfile_error:
        header = _av_header(data)
        if header is None:
            raise AudioDecodeError(f"could not read {label} as audio ({libsndfile_error}); "
                                   f"supported: {UPLOAD_FORMATS_HINT}") from None
        return header


def _av_header(data: bytes) -> AudioHeader | None:
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.sample_rate or 0)
            channels = int(stream.codec_context.channels or 0)
            seconds = container.duration / 1e6 if container.duration else (
                float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None)
    except (av.FFmpegError, OSError, ValueError, IndexError):
        return None
    if rate <= 0 or channels <= 0:
        return None
    return AudioHeader("av", rate, channels, None if seconds is None else int(seconds * rate))


def check_header(header: AudioHeader, limits: AudioLimits) -> None:
    """Refuse what is too slow a rate, too long or too many samples -- before any decoding."""
    if header.sample_rate < limits.min_sample_rate:
        raise AudioLimitError(f"the audio's sample rate is {header.sample_rate} Hz, below the "
                              f"{limits.min_sample_rate} Hz this server accepts (--min-audio-sample-rate)",
                              "audio_sample_rate_too_low")
    if header.channels < 1:
        raise AudioDecodeError("the audio has no channels")
    seconds = header.seconds
    if seconds is not None and seconds > limits.max_seconds:
        raise AudioLimitError(f"the audio lasts {seconds:.0f} s, longer than the {limits.max_seconds:g} s this "
                              "server accepts (--max-audio-seconds)", "audio_too_long")
    if header.frames is not None and header.frames * header.channels > limits.max_samples:
        raise AudioLimitError(
            f"the audio holds {header.frames * header.channels} samples ({header.channels} channels at "
            f"{header.sample_rate} Hz), more than the {limits.max_samples} (--max-audio-seconds of 48 kHz stereo) "
            "this server decodes", "audio_too_long")


def decode_mono(data: bytes, header: AudioHeader, limits: AudioLimits,
                label: str = "the uploaded file") -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate), decoded block by block within the header's promise."""
    budget = limits.max_samples if header.frames is None else header.frames * header.channels
    budget = min(budget, limits.max_samples) + BLOCK_FRAMES * header.channels  # the last block may overrun
    blocks: list[np.ndarray] = []
    read = 0
    try:
        for block in (_soundfile_blocks(data) if header.reader == "soundfile" else _av_blocks(data)):
            read += block.size
            if read > budget:
                raise AudioLimitError(f"{label} decodes to more audio than its header says or this server "
                                      "accepts (--max-audio-seconds)", "audio_too_long")
            blocks.append(block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block.astype(np.float32))
    except (AudioLimitError, AudioDecodeError):
        raise
    except Exception as exc:
        raise AudioDecodeError(f"could not decode {label} as audio ({exc}); supported: {UPLOAD_FORMATS_HINT}") from None
    mono = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if mono.size == 0:
        raise AudioDecodeError(f"{label} holds no audio samples")
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"{label} holds samples that are not finite numbers")
    return np.ascontiguousarray(mono, dtype=np.float32), header.sample_rate


def _soundfile_blocks(data: bytes):
    import soundfile

    with soundfile.SoundFile(io.BytesIO(data)) as f:
        yield from f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True)


def _av_blocks(data: bytes):
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.codec_context.sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1)
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1)
