"""Validation of every message a widget's browser half sends to the kernel.

A message that is malformed or hostile (wrong type, wrong dtype, too large, too frequent, non-finite) raises
:class:`MessageError` with a message for the widget's error line; the widget counts it and carries on, so a bad
message never kills the session or the kernel.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from lmdm.errors import LmdmError


class MessageError(LmdmError, ValueError):
    """A browser message the kernel refused; the text is shown in the widget."""


@dataclass(frozen=True)
class Limits:
    """What the kernel accepts from a browser.

    Attributes:
        max_audio_seconds: longest audio chunk in one message.
        min_rate, max_rate: accepted sample rates (Hz).
        max_messages_per_second: rate limit over a one-second window.
        max_strokes, max_points: sketch size limits.
        max_text: longest prompt.
    """

    max_audio_seconds: float = 2.0
    min_rate: int = 8000
    max_rate: int = 192000
    max_messages_per_second: int = 200
    max_strokes: int = 64
    max_points: int = 4096
    max_text: int = 1000


class RateLimiter:
    """Refuses more than ``per_second`` events in any one-second window."""

    def __init__(self, per_second: int, clock=time.monotonic):
        self.per_second, self.clock = per_second, clock
        self.window_start, self.count = clock(), 0

    def check(self) -> None:
        """Raises MessageError when the rate is exceeded."""
        now = self.clock()
        if now - self.window_start >= 1.0:
            self.window_start, self.count = now, 0
        self.count += 1
        if self.count > self.per_second:
            raise MessageError(f"too many messages: more than {self.per_second} per second")


def audio_from_message(content: object, buffers: list, limits: Limits = Limits()) -> tuple[np.ndarray, int]:
    """Decode an audio message ``{"type": "audio", "rate": Hz}`` with one float32 buffer.

    Returns:
        ``(samples (n,) float32, sample_rate)``.

    Raises:
        MessageError: not an audio message, no or several buffers, a byte length that is not float32, a rate out
            of range, a chunk longer than ``limits.max_audio_seconds``.
    """
    if not isinstance(content, dict) or content.get("type") != "audio":
        raise MessageError("expected an audio message {type: 'audio', rate: Hz} with one Float32 buffer")
    rate = content.get("rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate != int(rate):
        raise MessageError(f"audio rate must be an integer number of Hz, got {rate!r}")
    rate = int(rate)
    if not limits.min_rate <= rate <= limits.max_rate:
        raise MessageError(f"audio rate {rate} Hz is outside {limits.min_rate}..{limits.max_rate} Hz")
    if not isinstance(buffers, (list, tuple)) or len(buffers) != 1:
        raise MessageError(f"an audio message carries exactly one buffer, got {len(buffers) if buffers else 0}")
    try:
        raw = memoryview(buffers[0]).cast("B")
    except TypeError as e:
        raise MessageError(f"audio buffer is not binary data ({e})") from e
    if len(raw) % 4:
        raise MessageError(f"audio buffer of {len(raw)} bytes is not Float32 samples (a multiple of 4 bytes)")
    if len(raw) // 4 > limits.max_audio_seconds * rate:
        raise MessageError(f"audio chunk of {len(raw) // 4 / rate:.2f} s is longer than {limits.max_audio_seconds} s")
    return np.frombuffer(raw, dtype="<f4").copy(), rate


def strokes_from_message(strokes: object, limits: Limits = Limits()) -> list[list[list[float]]]:
    """Check strokes sent by the sketch pad: a list of strokes, each a list of ``[seconds, height]`` numbers.

    Raises:
        MessageError: wrong structure, too many strokes or points, non-numeric values.
    """
    if not isinstance(strokes, list):
        raise MessageError("strokes must be a list of strokes")
    if len(strokes) > limits.max_strokes:
        raise MessageError(f"too many strokes ({len(strokes)} > {limits.max_strokes})")
    total = 0
    out = []
    for i, s in enumerate(strokes):
        if not isinstance(s, list):
            raise MessageError(f"stroke {i} must be a list of [seconds, height] points")
        total += len(s)
        if total > limits.max_points:
            raise MessageError(f"too many points (> {limits.max_points})")
        pts = []
        for p in s:
            if (not isinstance(p, (list, tuple)) or len(p) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)):
                raise MessageError(f"stroke {i}: points must be [seconds, height] number pairs, got {p!r}")
            pts.append([float(p[0]), float(p[1])])
        out.append(pts)
    return out


def text_from_message(text: object, limits: Limits = Limits()) -> str:
    """A prompt from the browser.

    Raises:
        MessageError: not a string or too long.
    """
    if not isinstance(text, str):
        raise MessageError(f"a prompt must be text, got {type(text).__name__}")
    if len(text) > limits.max_text:
        raise MessageError(f"prompt of {len(text)} characters is over the {limits.max_text} limit")
    return text
