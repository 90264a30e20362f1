"""The seams lens: do spectrogram jumps line up with the model's grid?

A model that generates latent frames of ``patch`` mel frames, in blocks of ``block_frames`` latent frames, can
leave seams: the spectrum jumps more between two latent frames (every 64 ms, a 15.6 Hz flutter that chops
sustained notes) or between two blocks (every 1.02 s) than inside them. Real music has no such grid, so both
ratios are 1.0 up to noise.

The jump between consecutive mel frames is the mean absolute difference of their normalised log-mel values.

* **frame seam ratio** = mean jump across a latent-frame boundary / mean jump inside a latent frame;
* **block seam ratio** = mean jump across a block boundary / mean jump over all consecutive frames.
"""
from __future__ import annotations

import numpy as np


def mel_jumps(mel: np.ndarray) -> np.ndarray:
    """``(frames - 1,)`` jump between consecutive frames of a spectrogram ``(frames, n_mels)``: the mean absolute
    difference over the bands."""
    mel = np.asarray(mel, dtype=np.float64)
    if mel.ndim != 2 or len(mel) < 2:
        raise ValueError(f"need a spectrogram (frames >= 2, n_mels), got shape {mel.shape}")
    return np.abs(np.diff(mel, axis=0)).mean(1)


def seam_ratios(mel: np.ndarray, patch: int, block_mel_frames: int, offset: int = 0) -> dict[str, float]:
    """Frame and block seam ratios of a spectrogram on a grid.

    Args:
        mel: ``(frames, n_mels)`` normalised log-mel (``MelCodec.latent_to_mel`` of generated latents, or
            ``audio_to_mel`` of decoded audio whose first sample starts a latent frame).
        patch: mel frames per latent frame (4).
        block_mel_frames: mel frames per block (``block_frames * patch`` = 64).
        offset: mel frame at which the grid starts (the first frame of a latent frame).

    Returns:
        ``{"frame": ratio, "block": ratio}`` (NaN where the spectrogram is too short to hold a boundary, or
        never changes).

    Raises:
        ValueError: not a spectrogram, or ``patch``/``block_mel_frames`` < 1.
    """
    if patch < 1 or block_mel_frames < 1:
        raise ValueError(f"patch and block_mel_frames must be >= 1, got {patch}, {block_mel_frames}")
    j = mel_jumps(mel)
    # jump i is between frames i and i + 1; it crosses a boundary when frame i + 1 starts a latent frame / block
    nxt = np.arange(1, len(j) + 1) - offset
    at_frame, at_block = nxt % patch == 0, nxt % block_mel_frames == 0
    mean = lambda m: float(j[m].mean()) if m.any() else float("nan")
    ratio = lambda a, b: a / b if b > 0 else float("nan")  # a spectrogram that never changes (silence) has no seams
    return {"frame": ratio(mean(at_frame), mean(~at_frame)) if patch > 1 else float("nan"),
            "block": ratio(mean(at_block), float(j.mean()))}
