"""Decoding request media: images with Pillow, video frames with PyAV, within configured limits.

Every size is checked on the header before pixels are decoded: an image's width x height (Pillow reads
it without decoding), a video stream's frame size (from the container and codec headers) -- the same
``max_image_pixels`` for both, so a frame is never allowed what the same picture as a PNG is not --
and the pixels of all images and sampled frames of one request together (``max_request_pixels``,
through a :class:`PixelBudget`). Each decoded frame is checked again (a stream may change size).

Failures raise :class:`MediaDecodeError` (a client error: the bytes are not a usable image/video).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..options import DEFAULTS as D


class MediaDecodeError(ValueError):
    """The media bytes could not be decoded, or exceed a limit."""


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = D.max_image_pixels  # decoded width x height of one image (checked before decoding)
    max_images: int = D.max_media_per_request  # images + videos in one request
    video_fps: float = D.video_fps  # default frame sampling rate
    video_max_frames: int = D.video_max_frames  # frames sampled from one video at most
    video_max_seconds: float = 600.0  # longest video accepted
    max_request_pixels: int = D.max_request_pixels  # all images and sampled video frames of one request together


class PixelBudget:
    """The pixels one request may still decode (``max_request_pixels``)."""

    def __init__(self, limits: MediaLimits):
        self.total = self.left = limits.max_request_pixels

    def take(self, pixels: int, what: str) -> None:
        if pixels > self.left:
            raise MediaDecodeError(f"{what} would bring this request's images and video frames to more than the "
                                   f"{self.total} pixels one request may decode (--max-request-pixels)")
        self.left -= pixels


def _check_frame_size(width: int, height: int, limits: MediaLimits, what: str) -> None:
    if width * height > limits.max_image_pixels:
        raise MediaDecodeError(f"{what} is {width}x{height} pixels, more than the {limits.max_image_pixels} pixels "
                               "this server accepts (--max-image-pixels)")


@dataclass
class DecodedVideo:
    frames: list[np.ndarray]  # (H, W, 3) uint8, in time order
    frame_indices: list[int]  # source frame index of each sampled frame
    source_fps: float
    sample_fps: float  # the rate the frames were taken at


def decode_image(data: bytes, limits: MediaLimits, budget: PixelBudget | None = None):
    """An RGB ``PIL.Image`` of ``data``."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        _check_frame_size(width, height, limits, "the image")
        if budget is not None:
            budget.take(width * height, f"the image ({width}x{height})")
        image.load()
    except MediaDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise MediaDecodeError(f"the image could not be decoded: {exc}") from None
    if width < 1 or height < 1:
        raise MediaDecodeError("the image is empty")
    return _to_rgb(image)


def _to_rgb(image):
    """Upright (EXIF orientation applied) RGB; transparent pixels shown over white."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_video(data: bytes, limits: MediaLimits, fps: float | None = None,
                 max_frames: int | None = None, budget: PixelBudget | None = None) -> DecodedVideo:
    """Frames sampled at ``fps`` (default ``limits.video_fps``), at most ``max_frames`` (capped by
    ``limits.video_max_frames``); when the video is longer the frames are spread evenly over it."""
    import av

    fps = limits.video_fps if fps is None else fps
    cap = limits.video_max_frames if max_frames is None else min(max_frames, limits.video_max_frames)
    if not fps > 0 or cap < 1:
        raise MediaDecodeError("video fps must be positive and max_frames at least 1")
    try:
        # skip_frame: FFmpeg's stream probe would otherwise decode a frame to learn what the headers say
        with av.open(io.BytesIO(data), mode="r", options={"skip_frame": "all"}) as container:
            if not container.streams.video:
                raise MediaDecodeError("the file has no video stream")
            stream = container.streams.video[0]
            source_fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            duration = container.duration / 1e6 if container.duration else (
                stream.frames / source_fps if stream.frames else None)
            if duration is not None and duration > limits.video_max_seconds:
                raise MediaDecodeError(f"the video lasts {duration:.0f} s, longer than the "
                                       f"{limits.video_max_seconds:g} s this server accepts")
            # Sample times: every 1/fps seconds, spread evenly over the video when that exceeds the cap.
            count = cap if duration is None else max(1, min(cap, int(duration * fps) or 1))
            step = 1.0 / fps if duration is None else max(duration / count, 1.0 / fps) if count > 1 else 0.0
            width, height = stream.codec_context.width, stream.codec_context.height
            if width and height:  # the header's frame size: checked before a single frame is decoded
                _check_frame_size(width, height, limits, "a frame of the video")
                if budget is not None:
                    budget.take(count * width * height, f"the video's {count} frames of {width}x{height}")
            frames, indices = [], []
            for i, frame in enumerate(container.decode(stream)):
                _check_frame_size(frame.width, frame.height, limits, "a frame of the video")
                t = frame.time if frame.time is not None else i / source_fps
                if t > limits.video_max_seconds:
                    raise MediaDecodeError(f"the video is longer than {limits.video_max_seconds:g} seconds")
                if t + 1e-6 >= len(frames) * step:
                    if budget is not None and (frame.width, frame.height) != (width, height):
                        budget.take(frame.width * frame.height, f"a {frame.width}x{frame.height} frame")
                    frames.append(frame.to_ndarray(format="rgb24"))
                    indices.append(i)
                    if len(frames) >= count:
                        break
    except MediaDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaDecodeError(f"the video could not be decoded: {exc}") from None
    if not frames:
        raise MediaDecodeError("the video has no frames")
    return DecodedVideo(frames, indices, source_fps, 1.0 / step if step else fps)
