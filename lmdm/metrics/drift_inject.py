"""Can the drift lenses see a drift? Real validation music made into streams, measured unchanged and with drifts
injected that grow linearly from nothing at the start to full strength at the end (issue 13: "'No drift found' is a
valid finding only when the lenses are shown able to detect a drift that you inject").

The injected drifts, each a pure function of ``(audio (samples,), sample_rate) -> (samples,)`` float32:

* **gain ramp**: 0 dB at the start to ``+end_db`` at the end, then hard-clipped to [-1, 1] as a file writer would;
* **noise ramp**: white Gaussian noise whose rms grows from 0 to the stream's rms times ``10^(-end_snr_db / 20)``
  (0 dB: as loud as the music at the end), clipped likewise;
* **low-pass ramp**: a cross-fade from the stream to its 4th-order Butterworth low-pass (zero-phase,
  ``scipy.signal.sosfiltfilt``) at ``cutoff_hz``: the highs fade out over the stream (a dulling, smearing drift).

Each stream is then measured exactly as a generated one (``lmdm.metrics.report.window_rows`` against the same
baseline) and judged by ``lmdm.metrics.drift_stats``: the check passes when no lens flags the unchanged streams and
at least one lens flags each injected drift.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmdm.errors import UsageError
from lmdm.metrics.drift_stats import aggregate
from lmdm.metrics.report import Baseline, window_rows

UNCHANGED = "real (unchanged)"


def _ramp(n: int) -> np.ndarray:
    """``(n,)`` from 0 at the first sample to 1 at the last."""
    return np.linspace(0.0, 1.0, n, dtype=np.float64) if n > 1 else np.ones(n)


def gain_ramp(audio: np.ndarray, sample_rate: int, end_db: float = 8.0) -> np.ndarray:
    """``audio`` ``(samples,)`` with a gain growing linearly in dB from 0 to ``end_db``, clipped to [-1, 1]."""
    a = np.asarray(audio, np.float64)
    return np.clip(a * 10 ** (end_db * _ramp(len(a)) / 20), -1, 1).astype(np.float32)


def noise_ramp(audio: np.ndarray, sample_rate: int, end_snr_db: float = 0.0, seed: int = 0) -> np.ndarray:
    """``audio`` plus white noise whose rms grows linearly from 0 to ``rms(audio) * 10^(-end_snr_db / 20)``,
    clipped to [-1, 1]."""
    a = np.asarray(audio, np.float64)
    rms = float(np.sqrt(np.mean(a ** 2))) if len(a) else 0.0
    noise = np.random.default_rng(seed).standard_normal(len(a)) * rms * 10 ** (-end_snr_db / 20) * _ramp(len(a))
    return np.clip(a + noise, -1, 1).astype(np.float32)


def lowpass_ramp(audio: np.ndarray, sample_rate: int, cutoff_hz: float = 400.0) -> np.ndarray:
    """``audio`` cross-faded linearly into its low-pass at ``cutoff_hz`` (4th-order Butterworth, zero phase).

    Raises:
        UsageError: ``cutoff_hz`` not below the Nyquist frequency.
    """
    from scipy.signal import butter, sosfiltfilt

    if not 0 < cutoff_hz < sample_rate / 2:
        raise UsageError(f"the low-pass cutoff must be in (0, {sample_rate / 2:g}) Hz, got {cutoff_hz}")
    a = np.asarray(audio, np.float64)
    low = sosfiltfilt(butter(4, cutoff_hz, fs=sample_rate, output="sos"), a)
    return (a + _ramp(len(a)) * (low - a)).astype(np.float32)


#: The injected drifts of the check, by label.
INJECTIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "gain ramp 0 -> +8 dB": gain_ramp,
    "noise ramp to 0 dB SNR": noise_ramp,
    "low-pass ramp to 400 Hz": lowpass_ramp,
}


def real_streams(data_dir: str | Path, seconds: float, n: int, sample_rate: int, seed: int = 0) -> list[np.ndarray]:
    """Up to ``n`` disjoint streams of ``seconds`` of real music: every validation piece of ``data_dir`` in a seeded
    order, concatenated and cut into consecutive streams. When the split holds less than one stream, one stream of
    all of it.

    Raises:
        DataError: no data set or no validation piece.
    """
    from lmdm.eval.windows import real_pieces

    pieces = [a for _, a in real_pieces(data_dir, "val", 0.0, 10 ** 6, sample_rate, seed)]
    order = np.random.default_rng(seed).permutation(len(pieces))
    audio = np.concatenate([pieces[i] for i in order]).astype(np.float32)
    length = round(seconds * sample_rate)
    k = min(n, len(audio) // length)
    return [audio[i * length: (i + 1) * length] for i in range(k)] if k else [audio]


def sensitivity_check(baseline: Baseline, seconds: float, window_s: float, n_streams: int = 3, n_boot: int = 1000,
                      seed: int = 0, injections: dict | None = None) -> dict:
    """Measure real validation streams unchanged and with each injected drift, and judge every variant.

    Args:
        baseline: a loaded baseline with a data set (``load_baseline(..., data_dir)``): its band judges the windows
            and its validation pieces make the streams.
        seconds: stream length (the study's), at least two windows; shorter when the validation split holds less.
        window_s: window length, seconds (the study's).
        n_streams: real streams (disjoint pieces) per variant.
        injections: ``{label: (audio, sample_rate) -> audio}``; default :data:`INJECTIONS`.

    Returns:
        ``stream_s`` (the streams' length), ``n_streams``, ``systems`` (``{variant: drift_stats.aggregate(...)}``,
        the unchanged streams first, as :data:`UNCHANGED`), ``flagged_by`` (``{variant: lenses that flag drift}``)
        and ``passed``: the unchanged streams flagged by no lens and every injected drift by at least one.

    Raises:
        UsageError: no data set in ``baseline``, or the real streams are shorter than two windows.
    """
    if baseline.data_dir is None:
        raise UsageError("the injected-drift check needs a data set (its validation music and band)")
    sr = baseline.codec.cfg.sample_rate
    streams = real_streams(baseline.data_dir, max(seconds, 2 * window_s), n_streams, sr, seed)
    if len(streams[0]) < 2 * round(window_s * sr):
        raise UsageError(f"the validation music ({len(streams[0]) / sr:.0f} s) is shorter than two {window_s:g} s "
                         "windows: the check needs a first and a last window")
    variants = {UNCHANGED: lambda a, sr: a, **(injections or INJECTIONS)}
    systems = {}
    for label, inject in variants.items():
        rows = [window_rows(inject(a, sr), sr, window_s, baseline) for a in streams]
        systems[label] = aggregate(rows, baseline.real_music, n_boot, seed)
    flagged = {label: agg["drift_lenses"] for label, agg in systems.items()}
    passed = not flagged[UNCHANGED] and all(flagged[v] for v in variants if v != UNCHANGED)
    return {"stream_s": len(streams[0]) / sr, "n_streams": len(streams), "systems": systems, "flagged_by": flagged,
            "passed": bool(passed)}
