"""Audio files, on well-kept libraries: soundfile for reading and writing, soxr (through the sanitiser) for
resampling.

Arrays here are float32 numpy, shape ``(samples,)`` for mono. Everything read goes through
:func:`to_mono_float` and everything written through the same sanitiser (:mod:`lmdm.audio.sanitize`), so stereo,
integer PCM, NaN/inf samples and other sample rates are repaired by one set of documented rules.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lmdm.atomic import atomic_file
from lmdm.audio.sanitize import AudioError, sanitize

__all__ = ["AudioError", "check_writable", "load_audio", "save_audio", "to_mono_float"]


def to_mono_float(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Repair ``audio`` into finite mono float32 at ``target_rate`` (the rules of :mod:`lmdm.audio.sanitize`).

    Args:
        audio: ``(samples,)`` or ``(samples, channels)`` (soundfile's layout; ``(channels, samples)`` is recognised
            for up to 8 channels) of any real dtype; integer PCM is scaled to [-1, 1] before the downmix.
        sample_rate: rate of ``audio`` in Hz.
        target_rate: wanted rate in Hz; other rates are resampled with soxr (high quality, one shot).

    Returns:
        ``(samples',)`` float32; NaN and inf samples are replaced by 0, values are clipped to [-1, 1].

    Raises:
        AudioError: ``audio`` is not real numbers, not 1-D or 2-D, or a rate is not an integer number of Hz in
            1000..384000.
    """
    return sanitize(audio, sample_rate, target_rate).audio


def load_audio(path: str | Path, target_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 at ``target_rate`` Hz, ``(samples,)``.

    Raises:
        AudioError: the file is missing or soundfile cannot decode it (wav, flac, ogg, mp3 are accepted).
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError subclasses
        raise AudioError(f"cannot read {path} as audio ({e}); accepted formats: wav, flac, ogg, mp3") from e
    return to_mono_float(data, sr, target_rate)


def check_writable(path: str | Path) -> Path:
    """Check that an output file can be created at ``path`` before any expensive work starts.

    Raises:
        AudioError: the folder does not exist or is not writable, or ``path`` is a folder.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AudioError(f"output path {path} is a folder; give a file name such as {path / 'out.wav'}")
    if not folder.is_dir():
        raise AudioError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise AudioError(f"cannot write {path}: folder {folder} is not writable")
    return path


def save_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write ``audio`` (``(samples,)`` or ``(samples, channels)``, float in [-1, 1]) atomically.

    The samples pass the sanitiser's rules without the downmix (:func:`lmdm.audio.sanitize.sanitize` with
    ``mono=False``): NaN/inf become 0, values are clipped to [-1, 1], integer PCM is scaled.

    The format follows the suffix (.wav, .flac, .ogg); wav is 16-bit PCM. The file appears only when complete,
    so an interrupted write never leaves a truncated file under the final name.

    Raises:
        AudioError: the folder is not writable, the suffix is not a known format, or ``audio`` / ``sample_rate``
            break the sanitiser's rules (not real numbers, a bad shape, a rate outside 1000..384000 Hz).
    """
    import soundfile as sf

    path = check_writable(path)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"unknown audio format {path.suffix!r} for {path}; use .wav, .flac or .ogg")
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
    a = sanitize(audio, sample_rate, mono=False).audio  # finite, in [-1, 1]; channels kept
    with atomic_file(path) as tmp:
        sf.write(str(tmp), a, int(sample_rate), format=fmt, subtype=subtype)
    return path
