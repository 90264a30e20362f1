"""The ARC losses (Novack et al. 2025, "Adversarial Relativistic-Contrastive", arXiv 2505.08175, section 3), as pure
functions.

* Relativistic adversarial loss (Jolicoeur-Martineau 2019; ARC eq. 3-4), with ``D`` scores of paired real and
  generated sequences: ``L_D = softplus(-(D(real) - D(fake)))``, ``L_G = softplus(D(real) - D(fake))``.
* Contrastive loss (ARC eq. 5): real audio with its own prompt must outscore the same audio with a caption that
  does not describe it: ``L_C = softplus(-(D(real, own) - D(real, other)))``.
* The contrastive negatives (captions of other works with other texts) come from ``lmdm.train.arc.negatives``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def relativistic_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``mean softplus(-(D(real) - D(fake)))``; scores ``(b,)``."""
    return F.softplus(-(d_real - d_fake)).mean()


def relativistic_g_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``mean softplus(D(real) - D(fake))``; scores ``(b,)``."""
    return F.softplus(d_real - d_fake).mean()


def contrastive_loss(d_matched: torch.Tensor, d_mismatched: torch.Tensor,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """``mean softplus(-(D(real, own prompt) - D(real, other prompt)))``; scores ``(b,)``.

    Args:
        keep: ``(b,)`` bool, the items that count (those scored with their own prompt; ARC-Forcing drops the prompt
            of some rollouts, and their real audio is then scored without one); None = all. No item kept gives 0
            (a graph-connected zero, so a backward pass still runs).
    """
    loss = F.softplus(-(d_matched - d_mismatched))
    if keep is None:
        return loss.mean()
    keep = keep.to(loss.device, loss.dtype)
    return (loss * keep).sum() / keep.sum().clamp_min(1.0)
