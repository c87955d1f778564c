"""Media bounded before it is decoded: audio by its header (rate, channels, length), video frames by the
same pixel limit as images plus a per-request pixel budget, and Anthropic image media types checked
against the bytes. Real server processes with tiny models built here (docs/reliability.md)."""

from __future__ import annotations

import base64
import io
import struct
import time

import httpx
import numpy as np
import pytest

from vllm_mlx_testing.attacks import HealthProbe, peak_rss_mb, reset_peak_rss, rss_mb

pytestmark = pytest.mark.reliability


# -- audio ----------------------------------------------------------------------------------------------
def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV written by hand, so its header can say any rate."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
            + b"data" + struct.pack("<I", len(pcm)) + pcm)


def flac_bytes(seconds: float, rate: int, channels: int) -> bytes:
    import soundfile

    silence = np.zeros((int(seconds * rate), channels), np.float32)  # compresses to almost nothing
    out = io.BytesIO()
    soundfile.write(out, silence, rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def audio_server(start_server, tiny_qwen3, models_dir):
    pytest.importorskip("mlx_audio", reason="the 'audio' extra is not installed")
    from vllm_mlx_testing.audio_models import build_tiny_whisper

    whisper = build_tiny_whisper(models_dir / "bounds-whisper")
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--stt-model", whisper,
                        "--preload-extra-models", "--max-audio-seconds", "600")


def _transcribe(server, data: bytes, name: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/audio/transcriptions", timeout=300,
                      data={"model": "bounds-whisper", "temperature": "0.2"}, files={"file": (name, data)})


def test_audio_is_refused_on_its_header(audio_server):
    """A 3 KB WAV whose header says 1 Hz (25 minutes once resampled), 10 minutes of WAV, and 2 minutes of
    8-channel 96 kHz FLAC (more samples than 10 minutes of 48 kHz stereo, in 90 KB): all refused from the
    header, in milliseconds, holding nothing."""
    one_hertz = wav_bytes(np.zeros(1500, np.float32), rate=1)
    long_flac = flac_bytes(120, 96000, 8)
    assert len(one_hertz) < 4096 and len(long_flac) < 2**20
    rss0 = rss_mb(audio_server.proc.pid)
    reset_peak_rss(audio_server.proc.pid)
    for data, name, code, flag in ((one_hertz, "a.wav", "audio_sample_rate_too_low", "--min-audio-sample-rate"),
                                   (wav_bytes(np.zeros(8000 * 601), 8000), "b.wav", "audio_too_long",
                                    "--max-audio-seconds"),
                                   (long_flac, "c.flac", "audio_too_long", "--max-audio-seconds")):
        started = time.monotonic()
        resp = _transcribe(audio_server, data, name)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert (error["code"], error["param"]) == (code, "file") and flag in error["message"]
        assert time.monotonic() - started < 3
    assert peak_rss_mb(audio_server.proc.pid) - rss0 < 20  # nothing was decoded
    assert httpx.get(f"{audio_server.base_url}/health").json()["extra_models"]["transcription"]["calls"] == 0


def test_audio_decodes_off_the_event_loop(audio_server):
    """8 channels at 96 kHz within the limits are decoded (to mono, block by block) and resampled on the
    model's worker thread: /health answers quickly all the while."""
    data = flac_bytes(70, 96000, 8)  # 54 M samples (within 600 s of 48 kHz stereo); decoding takes ~1 s
    with HealthProbe(audio_server.base_url) as probe:
        resp = _transcribe(audio_server, data, "ok.flac")
    assert resp.status_code == 200, resp.text
    assert probe.latencies and probe.percentile_ms(0.99) < 500, (probe.percentile_ms(0.99), max(probe.latencies))
    print("health during the decode: p99 %.0f ms, max %.0f ms" % (probe.percentile_ms(0.99), 1000 * max(probe.latencies)))
    verbose = httpx.post(f"{audio_server.base_url}/v1/audio/transcriptions", timeout=300, files={
        "file": ("s.wav", wav_bytes(np.zeros(16000, np.float32), 16000))}, data={
        "model": "bounds-whisper", "response_format": "verbose_json", "temperature": "0.2"}).json()
    assert verbose["duration"] == pytest.approx(1.0, abs=0.01)


# -- video and images -----------------------------------------------------------------------------------
MAX_IMAGE_PIXELS = 1_000_000
MAX_REQUEST_PIXELS = 2_000_000


def h264(width: int, height: int, frames: int = 2, fps: int = 2) -> bytes:
    """A tiny H.264 file of flat frames (it compresses to a few KB whatever the frame size)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def vision_server(start_server, models_dir):
    pytest.importorskip("av")
    from vllm_mlx_testing.vision_models import build_tiny_vision_model

    model = build_tiny_vision_model(models_dir / "bounds-qwen2-vl", "qwen2_vl")
    return start_server(model, "--served-model-name", "vl", "--max-image-pixels", str(MAX_IMAGE_PIXELS),
                        "--max-request-pixels", str(MAX_REQUEST_PIXELS))


def _chat(server, content: list) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", timeout=300, json={
        "model": "vl", "max_tokens": 2, "messages": [{"role": "user", "content": content}]})


def _video(data: bytes, **options) -> dict:
    return {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(data).decode(),
                                               **options}}


def test_video_frames_obey_the_image_pixel_limit(vision_server):
    """A few-KB H.264 file whose frames are over the pixel limit is refused from its header, as the
    same frame sent as a PNG is; nothing is decoded."""
    from vllm_mlx_testing.vision_models import data_url, random_image

    big = h264(4000, 4000)  # decoding one frame would take ~40 MB
    assert len(big) < 20_000
    small = _chat(vision_server, [_video(h264(64, 48, frames=4)), {"type": "text", "text": "what happens?"}])
    assert small.status_code == 200, small.text  # (and PyAV is loaded)
    rss0 = rss_mb(vision_server.proc.pid)
    reset_peak_rss(vision_server.proc.pid)
    started = time.monotonic()
    resp = _chat(vision_server, [_video(big), {"type": "text", "text": "what happens?"}])
    assert resp.status_code == 400 and "--max-image-pixels" in resp.json()["error"]["message"], resp.text
    assert "4000x4000" in resp.json()["error"]["message"] and time.monotonic() - started < 5
    assert peak_rss_mb(vision_server.proc.pid) - rss0 < 15  # not even the stream probe decoded a frame
    png = _chat(vision_server, [{"type": "image_url", "image_url": {"url": data_url(random_image(1, (1200, 1000)))}}])
    assert png.status_code == 400 and "--max-image-pixels" in png.json()["error"]["message"]


def test_pixels_per_request_are_budgeted(vision_server):
    """Each video is within the per-image limit; together their sampled frames are over the budget."""
    one = h264(1000, 1000, frames=2, fps=1)  # 2 sampled frames of 1M pixels: at the budget
    ok = _chat(vision_server, [_video(one, fps=1.0), {"type": "text", "text": "?"}])
    assert ok.status_code == 200, ok.text
    resp = _chat(vision_server, [_video(one, fps=1.0), _video(one, fps=1.0), {"type": "text", "text": "?"}])
    assert resp.status_code == 400 and "--max-request-pixels" in resp.json()["error"]["message"], resp.text


def test_anthropic_image_media_type_is_checked_against_the_bytes(vision_server):
    from vllm_mlx_testing.vision_models import random_image

    def message(data: bytes, media_type: str) -> httpx.Response:
        return httpx.post(f"{vision_server.base_url}/v1/messages", timeout=300, json={
            "model": "vl", "max_tokens": 2, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                             "data": base64.b64encode(data).decode()}},
                {"type": "text", "text": "what is it?"}]}]})

    png, jpeg = random_image(1, fmt="PNG"), random_image(1, fmt="JPEG")
    gif, webp = random_image(1, fmt="GIF"), random_image(1, fmt="WEBP")
    for data, media_type in ((png, "image/png"), (jpeg, "image/jpeg"), (gif, "image/gif"), (webp, "image/webp")):
        assert message(data, media_type).status_code == 200, media_type
    for data, media_type, says in ((png, "image/jpeg", "image/png"), (jpeg, "image/png", "image/jpeg"),
                                   (b"<svg></svg>", "image/png", "no supported image format")):
        resp = message(data, media_type)
        assert resp.status_code == 400, (media_type, resp.text)
        error = resp.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert f"does not match media_type {media_type}" in error["error"]["message"] and says in error["error"]["message"]
    resp = message(png, "image/tiff")
    assert resp.status_code == 400 and "media_type must be one of" in resp.json()["error"]["message"]
