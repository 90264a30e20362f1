"""Griffin-Lim phase reconstruction in torch (no torchaudio), with the "fast" momentum of Perraudin et al.

Griffin & Lim 1984, "Signal estimation from modified short-time Fourier transform"; momentum from Perraudin,
Balazs & Sondergaard 2013, "A fast Griffin-Lim algorithm" (the same update as ``librosa.griffinlim``).
"""
from __future__ import annotations

import torch


def stft(audio: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """Complex STFT with centred frames; ``(batch, samples)`` -> ``(batch, n_fft // 2 + 1, samples // hop + 1)``."""
    return torch.stft(audio, n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect", return_complex=True)


def istft(spec: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`stft`; ``(batch, bins, frames)`` complex -> ``(batch, length)`` samples."""
    return torch.istft(spec, n_fft, hop_length=hop, window=window, center=True, length=length)


def griffin_lim(
    magnitude: torch.Tensor,
    n_fft: int,
    hop: int,
    n_iter: int = 32,
    momentum: float = 0.99,
    init_phase: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Audio whose STFT magnitude approximates ``magnitude``.

    Args:
        magnitude: ``(batch, n_fft // 2 + 1, frames)`` linear STFT magnitudes (frames centred every ``hop``).
        n_fft, hop: STFT size and hop in samples; a Hann window of ``n_fft`` samples.
        n_iter: iterations (32 is enough for a mel inversion; more gives diminishing returns).
        momentum: fast Griffin-Lim momentum in [0, 1) (0 = the original algorithm).
        init_phase: ``(batch, bins, frames)`` starting phase in radians; NaN entries (or None) start from random
            phase drawn with ``generator``. Streaming decoders pass the previous block's phase for the overlap.
        generator: torch RNG for the random initial phase (same generator state -> same audio).

    Returns:
        ``(batch, frames * hop)`` float audio (the STFT's last frame is centred on the final sample).
    """
    if magnitude.dim() != 3:
        raise ValueError(f"magnitude must be (batch, bins, frames), got shape {tuple(magnitude.shape)}")
    window = torch.hann_window(n_fft, dtype=magnitude.dtype, device=magnitude.device)
    length = (magnitude.shape[-1] - 1) * hop
    rand = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype) * (2 * torch.pi)
    phase = rand if init_phase is None else torch.where(torch.isnan(init_phase), rand, init_phase)
    angles = torch.polar(torch.ones_like(magnitude), phase)
    prev = torch.zeros_like(angles)
    for _ in range(n_iter):
        audio = istft(magnitude * angles, n_fft, hop, window, length)
        rebuilt = stft(audio, n_fft, hop, window)
        angles = rebuilt - (momentum / (1 + momentum)) * prev if momentum else rebuilt
        angles = angles / angles.abs().clamp_min(1e-8)
        prev = rebuilt
    return istft(magnitude * angles, n_fft, hop, window, length)
