"""Audio I/O and sanitising, on well-kept libraries: soundfile for files, soxr for resampling.

Arrays here are float32 numpy, shape ``(samples,)`` for mono. Everything that enters the model path goes through
:func:`to_mono_float` so that stereo, integer PCM, NaN/inf samples and other sample rates are repaired in one
documented place.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from lmdm.errors import LmdmError


class AudioError(LmdmError, ValueError):
    """Audio that cannot be read, written or repaired; the message says what was wrong and what is accepted."""


def to_mono_float(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Repair ``audio`` into finite mono float32 at ``target_rate``.

    Args:
        audio: ``(samples,)`` or ``(samples, channels)`` (soundfile's layout) of any numeric dtype; integer PCM is
            scaled to [-1, 1].
        sample_rate: rate of ``audio`` in Hz.
        target_rate: wanted rate in Hz; other rates are resampled with soxr (high quality).

    Returns:
        ``(samples',)`` float32; NaN and inf samples are replaced by 0, values are clipped to [-1, 1].

    Raises:
        AudioError: ``audio`` is not 1-D or 2-D, or ``sample_rate`` is not a positive number.
    """
    a = np.asarray(audio)
    if a.ndim not in (1, 2):
        raise AudioError(f"audio must be (samples,) or (samples, channels), got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):  # PCM: scale before any downmix turns it into floats
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    a = a.astype(np.float32, copy=False)
    if a.ndim == 2:
        # soundfile gives (samples, channels); accept (channels, samples) when it is clearly that way round
        if a.shape[0] <= 8 and a.shape[1] > a.shape[0]:
            a = a.T
        a = a.mean(axis=1)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(a, -1.0, 1.0, out=a)
    if not (isinstance(sample_rate, (int, float)) and sample_rate > 0):
        raise AudioError(f"sample rate must be a positive number of Hz, got {sample_rate!r}")
    if int(sample_rate) != int(target_rate) and a.size:
        import soxr

        a = soxr.resample(a, int(sample_rate), int(target_rate), quality="HQ").astype(np.float32)
    return a


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write ``audio`` (``(samples,)`` or ``(samples, channels)``, float in [-1, 1]) atomically.

    The format follows the suffix (.wav, .flac, .ogg); wav is 16-bit PCM. The file appears only when complete,
    so an interrupted write never leaves a truncated file under the final name.

    Raises:
        AudioError: the folder is not writable or the suffix is not a known format.
    """
    import soundfile as sf

    path = check_writable(path)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"unknown audio format {path.suffix!r} for {path}; use .wav, .flac or .ogg")
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
    a = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32)), -1.0, 1.0)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, a, int(sample_rate), format=fmt, subtype=subtype)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
