"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer", eq. 34) over latent-frame positions.

Angles are computed in float64 and only then cast, so absolute positions of a long stream (a 10-minute stream is
~9,400 frames) keep full precision; attention scores depend only on the distance between frames, which is why a
KV cache can store keys already rotated at their absolute frame index and never re-rotate them when the window
slides (see ``lmdm.model.cache``).
"""
from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for ``positions``.

    Args:
        positions: ``(..., tokens)`` integer or float frame indices.
        head_dim: even per-head channel count.
        base: RoPE base (wavelengths from 2*pi to 2*pi*base frames).

    Returns:
        ``(cos, sin)``, each ``(..., tokens, head_dim // 2)`` in ``dtype``, on the device of ``positions``.
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    device = positions.device
    if device.type == "mps":  # MPS has no float64: compute the tables on the CPU and move them
        positions = positions.cpu()
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    ang = positions.to(torch.float64)[..., None] * inv_freq
    return ang.cos().to(dtype=dtype, device=device), ang.sin().to(dtype=dtype, device=device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of ``x``.

    Args:
        x: ``(batch, heads, tokens, head_dim)``.
        cos, sin: ``(tokens, head_dim // 2)`` or ``(batch, tokens, head_dim // 2)``.
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
