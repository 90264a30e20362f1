"""Control features per latent frame: one pathway for sketches and for jamming.

Four features per latent frame, in three groups that can each be present or absent:

========  ==========  ===========================================================================
group     feature     value
========  ==========  ===========================================================================
melody    pitch       top-voice MIDI pitch, ``(midi - 60) / 12`` (0 where unvoiced)
melody    voiced      1 where a note sounds, else 0
rhythm    onset       1 where a note starts in the frame, else 0
dynamics  loudness    frame RMS in dBFS clipped to [-70, 0], ``(dB + 35) / 15``
========  ==========  ===========================================================================

The model input (``control_dim = 7``) is the four features with absent groups zeroed, followed by three
presence flags (melody, rhythm, dynamics). Training takes melody and rhythm from the symbolic score (exact) and
loudness from the rendered audio, and drops groups at random (control dropout), so the same checkpoint runs with
any subset of controls or none.
"""
from __future__ import annotations

import numpy as np
import torch

from lmdm.errors import UsageError

FEATURES = ("pitch", "voiced", "onset", "loudness")
GROUPS = {"melody": (0, 1), "rhythm": (2,), "dynamics": (3,)}
CONTROL_DIM = len(FEATURES) + len(GROUPS)


def pitch_to_feature(midi: np.ndarray) -> np.ndarray:
    """MIDI pitch -> normalised pitch feature ``(midi - 60) / 12``."""
    return (np.asarray(midi, dtype=np.float32) - 60.0) / 12.0


def feature_to_pitch(f: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pitch_to_feature`."""
    return np.asarray(f, dtype=np.float32) * 12.0 + 60.0


def loudness_feature(audio: np.ndarray, samples_per_frame: int, n_frames: int) -> np.ndarray:
    """Frame loudness feature ``(n_frames,)`` of mono audio (RMS per latent frame, in dBFS, normalised)."""
    a = np.zeros(n_frames * samples_per_frame, dtype=np.float32)
    n = min(len(audio), len(a))
    a[:n] = audio[:n]
    rms = np.sqrt(np.mean(a.reshape(n_frames, samples_per_frame) ** 2, axis=1) + 1e-12)
    db = np.clip(20 * np.log10(rms + 1e-12), -70.0, 0.0)
    return ((db + 35.0) / 15.0).astype(np.float32)


def notes_features(notes: list[tuple[float, float, int]], frame_rate: float, n_frames: int) -> np.ndarray:
    """Melody and rhythm features from notes.

    Args:
        notes: ``(start_s, end_s, midi_pitch)`` per note.
        frame_rate: latent frames per second.
        n_frames: number of frames to fill.

    Returns:
        ``(n_frames, 3)``: pitch, voiced, onset (see the module table).
    """
    top = np.full(n_frames, -1, dtype=np.int32)
    onset = np.zeros(n_frames, dtype=np.float32)
    for start, end, pitch in notes:
        a = int(np.floor(start * frame_rate))
        b = int(np.ceil(end * frame_rate))
        if a >= n_frames or b <= 0:
            continue
        a, b = max(a, 0), min(max(b, a + 1), n_frames)
        np.maximum(top[a:b], pitch, out=top[a:b])
        onset[a] = 1.0
    voiced = (top >= 0).astype(np.float32)
    pitch = np.where(voiced > 0, pitch_to_feature(np.maximum(top, 0)), 0.0).astype(np.float32)
    return np.stack([pitch, voiced, onset], axis=1)


def midi_notes(midi_path: str) -> list[tuple[float, float, int]]:
    """All notes of a MIDI file as ``(start_s, end_s, pitch)`` (pretty_midi)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(midi_path))
    return [(n.start, n.end, n.pitch) for inst in pm.instruments if not inst.is_drum for n in inst.notes]


def control_input(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Model control channels from features and group presence.

    Args:
        features: ``(..., frames, 4)`` pitch, voiced, onset, loudness.
        present: ``(..., 3)`` bool or 0/1 presence of melody, rhythm, dynamics (one per item, all frames).

    Returns:
        ``(..., frames, 7)``: features with absent groups zeroed, then the three presence flags.

    Raises:
        UsageError: ``features`` do not have 4 channels.
    """
    if features.shape[-1] != len(FEATURES):
        raise UsageError(f"features must have {len(FEATURES)} channels ({', '.join(FEATURES)}), got {features.shape[-1]}")
    p = present.to(features.dtype)
    keep = torch.stack([p[..., 0], p[..., 0], p[..., 1], p[..., 2]], dim=-1)[..., None, :]
    flags = p[..., None, :].expand(*features.shape[:-1], len(GROUPS))
    return torch.cat([features * keep, flags], dim=-1)


PITCH_FMIN, PITCH_FMAX = 65.0, 1050.0  # C2 .. C6, the range the pitch trackers search


def track_pitch(audio: np.ndarray, sample_rate: int, hop: int, tracker: str = "pyin") -> tuple[np.ndarray, np.ndarray]:
    """Fundamental frequency of mono audio, one value per ``hop`` samples.

    Args:
        audio: ``(samples,)`` mono float.
        sample_rate: Hz.
        hop: samples between estimates (the codec's samples per latent frame gives one per latent frame).
        tracker: "pyin" (probabilistic YIN with an HMM voicing decision; Mauch & Dixon 2014; accurate, ~45 ms per
            second of audio) or "yin" (de Cheveigne & Kawahara 2002; ~1 ms per second; voiced where the frame is
            louder than -45 dBFS).

    Returns:
        ``(f0_hz, voiced)``, each ``(ceil(samples / hop),)``, estimate ``i`` centred at ``(i + 0.5) * hop`` (the
        middle of latent frame ``i``); f0 is 0 where unvoiced.

    Raises:
        UsageError: unknown tracker.
    """
    import librosa

    n = -(-len(audio) // hop)
    # shift by half a hop so that estimate i is centred on latent frame i, (i + 0.5) * hop
    a = np.zeros(max(n, 1) * hop + hop // 2, dtype=np.float32)
    a[hop // 2 : hop // 2 + len(audio)] = audio
    frame = max(2048, 2 * hop)
    if tracker == "pyin":
        f0, voiced, _ = librosa.pyin(a, fmin=PITCH_FMIN, fmax=PITCH_FMAX, sr=sample_rate, frame_length=frame,
                                     hop_length=hop, center=True)
        f0, voiced = np.nan_to_num(f0[:n]), voiced[:n].astype(bool)
    elif tracker == "yin":
        f0 = librosa.yin(a, fmin=PITCH_FMIN, fmax=PITCH_FMAX, sr=sample_rate, frame_length=frame, hop_length=hop,
                         center=True)[:n]
        rms = librosa.feature.rms(y=a, frame_length=frame, hop_length=hop, center=True)[0][:n]
        voiced = 20 * np.log10(rms + 1e-9) > -45.0
    else:
        raise UsageError(f"unknown pitch tracker {tracker!r}; choose 'pyin' or 'yin'")
    return np.where(voiced, f0, 0.0).astype(np.float32), voiced


def hz_to_midi(f0: np.ndarray) -> np.ndarray:
    """Hz -> (fractional) MIDI pitch; 0 Hz stays 0."""
    f = np.asarray(f0, dtype=np.float64)
    return np.where(f > 0, 69.0 + 12.0 * np.log2(np.maximum(f, 1e-9) / 440.0), 0.0).astype(np.float32)


def onset_frames(audio: np.ndarray, sample_rate: int, hop: int, n_frames: int) -> np.ndarray:
    """``(n_frames,)`` 1 where librosa's onset detector finds a note start inside the frame, else 0."""
    import librosa

    out = np.zeros(n_frames, dtype=np.float32)
    if len(audio) < 2048:
        return out
    sub = 256  # detect on a finer grid, then fold into frames of ``hop`` samples
    onsets = librosa.onset.onset_detect(y=audio.astype(np.float32), sr=sample_rate, hop_length=sub, units="samples")
    idx = np.asarray(onsets) // hop
    out[idx[idx < n_frames]] = 1.0
    return out


def features_from_audio(audio: np.ndarray, sample_rate: int, samples_per_frame: int, tracker: str = "pyin") -> np.ndarray:
    """Control features of a recording, one row per latent frame: ``(frames, 4)`` pitch, voiced, onset, loudness.

    The same definitions as training's (module table); melody comes from a pitch tracker (:func:`track_pitch`)
    instead of the score, so a monophonic instrument or voice is what it reads best.
    """
    from threadpoolctl import threadpool_limits

    n = -(-len(audio) // samples_per_frame)
    # one BLAS thread: librosa's small matrix products gain nothing from two, and OpenBLAS workers left spinning
    # afterwards took a core from the model's next denoising steps (they ran 2x slower in the live engine)
    with threadpool_limits(limits=1, user_api="blas"):
        f0, voiced = track_pitch(audio, sample_rate, samples_per_frame, tracker)
        onsets = onset_frames(audio, sample_rate, samples_per_frame, n)
    midi = hz_to_midi(f0)
    pitch = np.where(voiced, pitch_to_feature(np.maximum(midi, 1e-3)), 0.0)
    return np.stack([pitch, voiced.astype(np.float32), onsets,
                     loudness_feature(audio, samples_per_frame, n)], axis=1).astype(np.float32)
