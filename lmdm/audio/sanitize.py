"""The one audio sanitiser: every array of samples that enters lmdm (a file, a recording, a microphone chunk from
the browser, a chunk pushed into the live engine) or leaves it (``save_audio``) passes through these rules.

Rules, in this order (validation first, so a refused chunk changes no state):

1. **dtype**: real numbers only (any integer, unsigned, float or bool dtype); text, objects and complex numbers
   are refused.
2. **shape**: ``(samples,)`` mono or 2-D. The layout of a 2-D array is ``(samples, channels)`` (soundfile's);
   ``(channels, samples)`` is recognised when the first dimension is at most :data:`MAX_CHANNELS_GUESS` and
   smaller than the second. At most :data:`MAX_CHANNELS` channels.
3. **rate**: an integer number of Hz in ``MIN_RATE..MAX_RATE`` (integral floats such as 44100.0 are accepted).
4. **length** (optional): at most ``max_seconds`` of audio in one call.
5. **integer PCM is scaled** to [-1, 1] *before* the downmix: signed ``x / iinfo.max`` (int16 32767 -> 1.0),
   unsigned centred first (uint8 128 -> 0.0, 255 -> 127/128).
6. **downmix**: the mean over channels (skipped with ``mono=False``).
7. **NaN and inf are zeroed**.
8. **clip** to [-1, 1].
9. **resample** with soxr (quality "HQ") to ``target_rate``; one-shot for a whole signal (:func:`sanitize`),
   stateful for a stream (:class:`StreamSanitizer`: one ``soxr.ResampleStream`` per input rate, so chunk
   boundaries leave no trace and chunked output equals the one-shot output sample for sample). Band-limited
   resampling can overshoot a full-scale signal slightly; the result is clipped again, silently.

Every repair is reported by name (:data:`REPAIRS`), so the live engine can count them. What cannot be repaired
raises :class:`AudioError` with one line saying what was wrong and what is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmdm.errors import LmdmError

MIN_RATE, MAX_RATE = 1000, 384_000
MAX_CHANNELS = 64
MAX_CHANNELS_GUESS = 8  # a 2-D array whose first dimension is this small and the shorter is (channels, samples)

#: Names of the repairs :func:`sanitize` reports (``"resampled from {rate} Hz"`` carries the input rate).
REPAIRS = ("integer PCM scaled", "downmixed to mono", "non-finite samples zeroed", "clipped to [-1, 1]",
           "resampled from {rate} Hz")


class AudioError(LmdmError, ValueError):
    """Audio that cannot be read, written or repaired; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class Sanitized:
    """A sanitised chunk.

    Attributes:
        audio: float32, ``(samples,)`` (mono) or ``(samples, channels)`` (``mono=False``), finite, in [-1, 1],
            at the target rate.
        repairs: the names of the repairs that were made (see :data:`REPAIRS`), in the order they were made.
    """

    audio: np.ndarray
    repairs: tuple[str, ...]


def check_rate(rate, what: str = "sample rate") -> int:
    """``rate`` as an int, checked.

    Raises:
        AudioError: not an integer number of Hz in ``MIN_RATE..MAX_RATE``.
    """
    ok = (isinstance(rate, (int, np.integer, float, np.floating)) and not isinstance(rate, bool)
          and np.isfinite(rate) and rate == int(rate) and MIN_RATE <= rate <= MAX_RATE)
    if not ok:
        raise AudioError(f"{what} must be an integer number of Hz from {MIN_RATE} to {MAX_RATE}, got {rate!r}")
    return int(rate)


def _validate(audio, sample_rate, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Rules 1-4: the array (channels last) and its rate, or AudioError. Changes nothing."""
    try:
        a = np.asarray(audio)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise AudioError(f"audio must be an array of numbers ({e})") from e
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise AudioError(f"audio must be real numbers (integer PCM or float), got dtype {a.dtype}")
    if a.ndim not in (1, 2):
        raise AudioError(f"audio must be (samples,) or (samples, channels), got shape {a.shape}")
    if a.ndim == 2:
        if a.shape[0] <= MAX_CHANNELS_GUESS and a.shape[1] > a.shape[0]:
            a = a.T  # (channels, samples)
        if not 1 <= a.shape[1] <= MAX_CHANNELS:
            raise AudioError(f"audio of shape {a.shape} has {a.shape[1]} channels; accepted: (samples, channels) "
                             f"with 1 to {MAX_CHANNELS} channels")
    rate = check_rate(sample_rate)
    if max_seconds is not None and len(a) > max_seconds * rate:
        raise AudioError(f"chunk of {len(a) / rate:.1f} s is over the {max_seconds:g} s limit; send shorter chunks")
    return a, rate


def _repair(a: np.ndarray, mono: bool, repairs: list[str]) -> np.ndarray:
    """Rules 5-8 on a validated array: float32, (downmixed), finite, in [-1, 1]; always a new array."""
    if np.issubdtype(a.dtype, np.unsignedinteger):  # offset binary: the midpoint is silence
        half = (int(np.iinfo(a.dtype).max) + 1) / 2
        a = ((a.astype(np.float64) - half) / half).astype(np.float32)
        repairs.append("integer PCM scaled")
    elif np.issubdtype(a.dtype, np.integer):  # scaled before any downmix turns it into floats
        a = (a.astype(np.float64) / float(np.iinfo(a.dtype).max)).astype(np.float32)
        repairs.append("integer PCM scaled")
    else:
        a = a.astype(np.float32, copy=True)
    if a.ndim == 2 and mono:
        if a.shape[1] > 1:
            repairs.append("downmixed to mono")
        a = a.mean(axis=1, dtype=np.float32) if len(a) else np.zeros(0, np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        a[bad] = 0.0
        repairs.append("non-finite samples zeroed")
    if np.abs(a).max(initial=0.0) > 1.0:
        np.clip(a, -1.0, 1.0, out=a)
        repairs.append("clipped to [-1, 1]")
    return a


def sanitize(audio, sample_rate, target_rate=None, *, mono: bool = True,
             max_seconds: float | None = None) -> Sanitized:
    """Apply the rules of this module to a whole signal (one-shot resampling).

    Args:
        audio: ``(samples,)``, ``(samples, channels)`` or ``(channels, samples)`` (see rule 2) of real numbers;
            integer dtypes are PCM.
        sample_rate: Hz of ``audio``.
        target_rate: wanted Hz (None: keep ``sample_rate``).
        mono: downmix to ``(samples,)``; False keeps the channels, ``(samples, channels)``.
        max_seconds: refuse more audio than this (None: no limit).

    Returns:
        a :class:`Sanitized`: float32 audio, finite, in [-1, 1], at ``target_rate``, and the repairs made.

    Raises:
        AudioError: non-numeric data, a bad shape, a rate outside ``MIN_RATE..MAX_RATE`` or a chunk over
            ``max_seconds`` (nothing is changed).
    """
    a, rate = _validate(audio, sample_rate, max_seconds)
    target = rate if target_rate is None else check_rate(target_rate, "target rate")
    repairs: list[str] = []
    a = _repair(a, mono, repairs)
    if rate != target:
        repairs.append(f"resampled from {rate} Hz")
        if len(a):
            import soxr

            a = np.clip(soxr.resample(a, rate, target, quality="HQ"), -1.0, 1.0).astype(np.float32, copy=False)
        else:
            a = np.zeros((0, *a.shape[1:]), np.float32)
    return Sanitized(a, tuple(repairs))


class StreamSanitizer:
    """The rules of this module for a stream of mono chunks: resampling is stateful, so chunk boundaries leave no
    trace (the concatenated output equals :func:`sanitize` of the whole signal, once :meth:`flush` is added).

    soxr holds back its filter delay: the first chunks at another rate come out a little shorter, the rest catches
    up. When the input rate changes, the old rate's held-back tail is emitted before the new rate's audio.

    Args:
        target_rate: Hz of the output.
        max_seconds: longest chunk accepted (None: no limit).
    """

    def __init__(self, target_rate: int, max_seconds: float | None = None):
        self.target_rate = check_rate(target_rate, "target rate")
        self.max_seconds = max_seconds
        self._rate: int | None = None
        self._stream = None

    def __call__(self, audio, sample_rate: int | None = None) -> Sanitized:
        """Sanitise one chunk (``(samples,)`` or 2-D, any numeric dtype) at ``sample_rate`` Hz (default: the
        target rate) into mono float32 at the target rate.

        Raises:
            AudioError: as :func:`sanitize`; the stream's state is unchanged by a refused chunk.
        """
        a, rate = _validate(audio, self.target_rate if sample_rate is None else sample_rate, self.max_seconds)
        repairs: list[str] = []
        a = _repair(a, True, repairs)
        tail = np.zeros(0, np.float32)
        if rate != self._rate:
            tail = self.flush()
        if rate != self.target_rate:
            repairs.append(f"resampled from {rate} Hz")
            if self._stream is None:
                import soxr

                self._stream = soxr.ResampleStream(rate, self.target_rate, 1, dtype="float32", quality="HQ")
            self._rate = rate
            a = self._stream.resample_chunk(a)
            np.clip(a, -1.0, 1.0, out=a)
        else:
            self._rate = rate
        return Sanitized(np.concatenate([tail, a]) if len(tail) else a, tuple(repairs))

    def flush(self) -> np.ndarray:
        """End of stream (or of one input rate): the resampler's held-back tail, ``(samples,)`` float32 (empty
        when nothing was resampled). The next chunk starts a fresh resampler."""
        out = np.zeros(0, np.float32)
        if self._stream is not None:
            out = np.clip(self._stream.resample_chunk(np.zeros(0, np.float32), last=True), -1.0, 1.0)
            out = out.astype(np.float32, copy=False)
        self._stream, self._rate = None, None
        return out

    def reset(self) -> None:
        """Forget the stream (the held-back tail is dropped)."""
        self._stream, self._rate = None, None
