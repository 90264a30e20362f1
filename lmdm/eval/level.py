"""The level lens: how loud, how peaky and how clipped decoded audio is (DESIGN.md section 7, "a model that gets
better by getting louder has not got better").

Every function takes mono float audio of shape ``(samples,)`` in full-scale units (1.0 = digital full scale) and a
sample rate in Hz, and is pure: no state, no files. Sources:

* integrated loudness: ITU-R BS.1770-4 (K-weighting, 400 ms blocks with 75 % overlap, -70 LUFS absolute gate and
  -10 LU relative gate), measured with ``pyloudnorm.Meter.integrated_loudness``;
* true peak: ITU-R BS.1770-4 Annex 2 (4x oversampling, then the largest magnitude), with
  ``scipy.signal.resample_poly`` as the interpolator;
* loudness range: EBU Tech 3342 (short-term loudness over 3 s windows at 10 Hz, -70 LUFS absolute gate, -20 LU
  relative gate, LRA = 95th minus 10th percentile), implemented here on pyloudnorm's K-weighting filters.
  ``pyloudnorm.Meter.loudness_range`` exists, but it appends 1.5 s of silence and uses a 0.09 s hop; on short clips
  the windows running into that silence widen the spread (measured: a stationary noise reads 2.2 LU for 5 s and
  1.1 LU for 10 s, where this function reads about 0). On 30 s signals the two agree within a few tenths of a LU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyloudnorm
from pyloudnorm.iirfilter import IIRfilter
from scipy.signal import resample_poly

from lmdm.errors import UsageError

CLIP_THRESHOLD = 0.999  # |x| at or above this counts as a clipped sample
TRUE_PEAK_OVERSAMPLING = 4  # BS.1770-4 Annex 2
LRA_WINDOW_S = 3.0  # EBU Tech 3342: short-term loudness window
LRA_HOP_S = 0.1  # EBU Tech 3342: at least 10 short-term values per second
LRA_ABSOLUTE_GATE_LUFS = -70.0
LRA_RELATIVE_GATE_LU = -20.0
LRA_PERCENTILES = (10.0, 95.0)


class LevelError(UsageError):
    """Audio given to the level lens is not 1-D finite float samples, or its sample rate is not positive."""


@dataclass(frozen=True)
class Level:
    """The level of one piece of mono audio.

    lufs: integrated loudness, LUFS (BS.1770-4); -inf for digital silence or audio gated away entirely, NaN when
        shorter than one 400 ms gating block.
    true_peak_dbtp: 4x-oversampled peak, dBTP (BS.1770-4 Annex 2); -inf for digital silence.
    clipped_fraction: fraction of samples with |x| >= 0.999, in [0, 1].
    lra_lu: loudness range, LU (EBU Tech 3342); NaN when shorter than one 3 s window or when no window passes the
        absolute gate (silence).
    rms_dbfs: 20 log10 of the root mean square, dB relative to a full-scale DC level (a full-scale sine reads
        -3.01 dBFS); -inf for digital silence.
    """

    lufs: float
    true_peak_dbtp: float
    clipped_fraction: float
    lra_lu: float
    rms_dbfs: float


def _check(audio, sample_rate) -> np.ndarray:
    if not (isinstance(sample_rate, (int, float, np.integer, np.floating)) and 0 < sample_rate < math.inf):
        raise LevelError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    x = np.asarray(audio)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise LevelError(f"audio must be 1-D real mono samples of shape (samples,), got shape {x.shape} {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise LevelError("audio contains NaN or infinite samples")
    return x


def _db(power_or_amplitude: float, factor: float) -> float:
    return factor * math.log10(power_or_amplitude) if power_or_amplitude > 0 else -math.inf


def integrated_loudness(audio, sample_rate: float) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4) of mono audio ``(samples,)`` at ``sample_rate`` Hz.

    Measured by ``pyloudnorm.Meter(sample_rate).integrated_loudness``. Returns NaN for audio shorter than one
    400 ms gating block and -inf for digital silence (every block below the -70 LUFS gate). A full-scale 997 Hz
    sine reads about -3.01 LUFS (-3.08 at 16 kHz, where the bilinear K-weighting differs slightly).
    Raises LevelError for input that is not 1-D finite audio or a non-positive rate.
    """
    x = _check(audio, sample_rate)
    meter = pyloudnorm.Meter(sample_rate)
    if len(x) < meter.block_size * sample_rate:
        return math.nan
    return float(meter.integrated_loudness(x))


def true_peak_dbtp(audio, sample_rate: float) -> float:
    """True peak in dBTP (ITU-R BS.1770-4 Annex 2) of mono audio ``(samples,)``.

    The audio is oversampled 4x with ``scipy.signal.resample_poly`` (a Kaiser-windowed sinc, which keeps the
    original samples), and the largest magnitude of the oversampled signal or the samples themselves is reported
    in dB re full scale. Catches intersample peaks: a sine at fs/4 sampled at 45 degrees reads 3 dB above its
    sample peak. Audio that starts or stops mid-waveform rings at its edges as a band-limited reconstruction (a
    DAC) would: measured +0.1 to +0.3 dB above the crest for a sine cut abruptly. -inf for digital silence. ``sample_rate`` is only checked (the oversampling factor is fixed).
    Raises LevelError for bad input.
    """
    x = _check(audio, sample_rate)
    if len(x) == 0:
        return -math.inf
    peak = float(np.max(np.abs(x)))
    if len(x) > 1:
        peak = max(peak, float(np.max(np.abs(resample_poly(x, TRUE_PEAK_OVERSAMPLING, 1)))))
    return _db(peak, 20.0)


def clipped_fraction(audio, sample_rate: float, threshold: float = CLIP_THRESHOLD) -> float:
    """Fraction of samples of mono audio ``(samples,)`` whose magnitude is at or above ``threshold`` (0.999 of full
    scale), in [0, 1]; 0 for empty audio. Raises LevelError for bad input."""
    x = _check(audio, sample_rate)
    return float(np.mean(np.abs(x) >= threshold)) if len(x) else 0.0


def short_term_loudness(audio, sample_rate: float) -> np.ndarray:
    """Short-term loudness in LUFS (EBU Tech 3341/3342): K-weighted mean square over 3 s windows every 0.1 s,
    ``-0.691 + 10 log10(mean square)``; only windows lying wholly inside the audio. Shape ``(windows,)``, empty
    when the audio is shorter than 3 s; -inf for silent windows. Raises LevelError for bad input."""
    x = _check(audio, sample_rate)
    window, hop = round(LRA_WINDOW_S * sample_rate), LRA_HOP_S * sample_rate
    if len(x) < window:
        return np.zeros(0)
    # the BS.1770 K-weighting, the same two biquads pyloudnorm.Meter builds for filter_class="K-weighting"
    for f in (IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sample_rate, "high_shelf"),
              IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass")):
        x = f.apply_filter(x)
    cumulative = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.round(np.arange(0, len(x) - window + 1, hop)).astype(np.int64)
    starts = starts[starts + window <= len(x)]
    mean_square = np.maximum(cumulative[starts + window] - cumulative[starts], 0.0) / window
    with np.errstate(divide="ignore"):
        return -0.691 + 10.0 * np.log10(mean_square)


def loudness_range(audio, sample_rate: float) -> float:
    """Loudness range in LU (EBU Tech 3342) of mono audio ``(samples,)``.

    Short-term loudness (:func:`short_term_loudness`), gated absolutely at -70 LUFS, then relatively at 20 LU below
    the power mean of the absolutely gated values; LRA is the 95th minus the 10th percentile of what remains.
    Stationary noise reads about 0 LU, noise stepping down 10 dB halfway about 10 LU. NaN when the audio is
    shorter than 3 s or every window is below the absolute gate. Raises LevelError for bad input.
    """
    stl = short_term_loudness(audio, sample_rate)
    stl = stl[stl >= LRA_ABSOLUTE_GATE_LUFS]
    if len(stl) == 0:
        return math.nan
    relative_gate = 10.0 * np.log10(np.mean(10.0 ** (stl / 10.0))) + LRA_RELATIVE_GATE_LU
    stl = stl[stl >= relative_gate]
    low, high = np.percentile(stl, LRA_PERCENTILES)
    return float(high - low)


def rms_dbfs(audio, sample_rate: float) -> float:
    """Root mean square of mono audio ``(samples,)`` in dB re a full-scale DC level (a full-scale sine reads
    -3.01 dBFS); -inf for silence or empty audio. Raises LevelError for bad input."""
    x = _check(audio, sample_rate)
    return _db(float(np.mean(x * x)) if len(x) else 0.0, 10.0)


def level(audio, sample_rate: float) -> Level:
    """All of the level lens at once for mono audio ``(samples,)`` at ``sample_rate`` Hz: a :class:`Level` with
    integrated loudness (LUFS), true peak (dBTP), clipped fraction, loudness range (LU) and RMS (dBFS). See the
    single functions for units, sources and what short or silent audio reads. Raises LevelError for input that is
    not 1-D finite audio or a non-positive rate."""
    x = _check(audio, sample_rate)
    return Level(
        lufs=integrated_loudness(x, sample_rate),
        true_peak_dbtp=true_peak_dbtp(x, sample_rate),
        clipped_fraction=clipped_fraction(x, sample_rate),
        lra_lu=loudness_range(x, sample_rate),
        rms_dbfs=rms_dbfs(x, sample_rate),
    )
