"""Compile librosa's numba kernels once, in one process, before anything runs them concurrently.

librosa caches its ``@guvectorize(cache=True)`` kernels (``localmax`` behind chroma and pitch tracking, and
others) on disk. numba writes each kernel as two cache files without atomicity between them, so two processes
compiling the same kernel at once can leave a mismatched pair, and the next process to load it crashes with a
segmentation fault (numba issue #10128; librosa issue #1998). Our test suite and notebooks run several processes
at once (kernels, the CLI, JupyterLab), so ``scripts/setup.sh`` and the test session run this first:

    python scripts/librosa_warmup.py

It exercises every librosa path lmdm uses (YIN, pYIN, onsets, chroma) on a second of a test tone; it takes a few
seconds when the cache is cold and well under one when it is warm.
"""
from __future__ import annotations

import numpy as np


def warm_up(sample_rate: int = 16000) -> None:
    """Run lmdm's librosa paths once so that their numba kernels are compiled and cached (see module docstring)."""
    import librosa

    from lmdm.control.features import features_from_audio

    t = np.arange(sample_rate) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    features_from_audio(tone, sample_rate, 1024, "yin")
    features_from_audio(tone, sample_rate, 1024, "pyin")
    mag = np.abs(librosa.stft(tone, n_fft=1024, hop_length=256)) ** 2
    librosa.feature.chroma_stft(S=mag, sr=sample_rate, n_fft=1024, norm=np.inf)


if __name__ == "__main__":
    warm_up()
    print("librosa's numba kernels are compiled and cached")
