"""Block seams: the equal-power crossfade and a click detector, as pure functions.

Magenta RealTime cross-fades chunks over 40 ms with an equal-power (sine/cosine) ramp; users of streaming music
models complain about clicks and choppy playback at chunk boundaries, so lmdm crossfades every seam and tests
the result with :func:`seam_click_ratio`.
"""
from __future__ import annotations

import numpy as np


def equal_power_ramps(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fade_out, fade_in)``, each ``(n,)``, with ``fade_out**2 + fade_in**2 == 1`` at every sample.

    Quarter-period cosine/sine ramps sampled at sample centres, so neither ramp reaches exactly 0 or 1 inside
    the seam (no sample is dropped).
    """
    x = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1) * (np.pi / 2)
    return np.cos(x).astype(np.float32), np.sin(x).astype(np.float32)


def crossfade(tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Equal-power crossfade of the outgoing ``tail`` into the incoming ``head`` (same length, ``(n,)``).

    For uncorrelated signals of equal power the output keeps that power across the seam.
    """
    if tail.shape != head.shape:
        raise ValueError(f"crossfade needs equal lengths, got {tail.shape} and {head.shape}")
    fo, fi = equal_power_ramps(len(tail))
    return tail * fo + head * fi


def seam_click_ratio(audio: np.ndarray, seams: list[int], sample_rate: int, window_s: float = 0.004) -> float:
    """How much sharper the signal changes at ``seams`` than elsewhere (1 = no different; a click gives >> 1).

    The signal is differentiated twice (a click is a jump in value or slope), and the energy in a short window
    around each seam is compared with the median energy of windows of the same length across the whole signal.

    Args:
        audio: ``(samples,)`` mono.
        seams: sample indices of block boundaries.
        sample_rate: Hz.
        window_s: window length around each seam, seconds.

    Returns:
        the largest seam-to-median energy ratio.
    """
    d2 = np.diff(np.asarray(audio, dtype=np.float64), n=2)
    w = max(2, int(window_s * sample_rate))
    n = len(d2) // w
    if n < 4 or not seams:
        raise ValueError("audio too short or no seams to measure")
    energy = (d2[: n * w].reshape(n, w) ** 2).mean(axis=1)
    ref = float(np.median(energy)) + 1e-20
    ratios = []
    for s in seams:
        a = max(0, s - w // 2 - 1)
        seg = d2[a : a + w]
        if len(seg):
            ratios.append(float((seg**2).mean()) / ref)
    return max(ratios)
