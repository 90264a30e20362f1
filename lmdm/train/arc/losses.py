"""The ARC losses (Novack et al. 2025, "Adversarial Relativistic-Contrastive", arXiv 2505.08175, section 3) and
the prompt roll, as pure functions.

* Relativistic adversarial loss (Jolicoeur-Martineau 2019; ARC eq. 3-4), with ``D`` scores of paired real and
  generated sequences: ``L_D = softplus(-(D(real) - D(fake)))``, ``L_G = softplus(D(real) - D(fake))``.
* Contrastive loss (ARC eq. 5): real audio with its own prompt must outscore the same audio with another item's
  prompt: ``L_C = softplus(-(D(real, own) - D(real, other)))``.
* Negatives come from rolling the prompts by one *on a copy*: rolling the original in place (a bug seen in public
  code) leaves a batch of 2 without a negative.
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


def contrastive_loss(d_matched: torch.Tensor, d_mismatched: torch.Tensor) -> torch.Tensor:
    """``mean softplus(-(D(real, own prompt) - D(real, other prompt)))``; scores ``(b,)``."""
    return F.softplus(-(d_matched - d_mismatched)).mean()


def roll_prompts(text: torch.Tensor, has_text: torch.Tensor | None = None):
    """Each item gets another item's prompt (item ``i`` that of item ``i - 1``), on copies (the inputs are
    untouched).

    Args:
        text: ``(b, dim)`` prompt embeddings, ``b >= 2``.
        has_text: ``(b,)`` or None.

    Returns:
        ``(rolled_text, rolled_has_text)`` (the second None if ``has_text`` is None).

    Raises:
        ValueError: a batch of one (no other prompt exists).
    """
    if text.shape[0] < 2:
        raise ValueError("the contrastive loss needs a batch of at least 2 (a negative prompt for every item)")
    # torch.roll returns a new tensor: item i gets item i-1's prompt, and for b >= 2 that is never item i
    return torch.roll(text, 1, 0), (None if has_text is None else torch.roll(has_text, 1, 0))
