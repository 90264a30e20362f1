"""The ARC discriminator: the first layers of the pretrained DiT (a trainable copy) plus a small convolutional
head (ARC, arXiv 2505.08175, section 3.2; DESIGN.md section 1).

It scores a re-noised sequence ``[context | rollout]``: all frames enter as noisy tokens at timestep ``t`` with
bidirectional attention and the prompt; the hidden states of the rollout frames after ``n_layers`` blocks go
through two 1-D convolutions and a mean over time to one score per item. It sees the crop's control channels
(melody, rhythm, dynamics, after the rollout's control dropout) as the student did, so it can tell a rollout
that ignores its sketch from the real continuation that the sketch was measured on.

**Level.** The discriminator must hear a loud and a quiet version of the same music as different (issue 13): its
input is the latent as it is, with no per-example normalisation (no standardisation, LayerNorm or GroupNorm over
the latent or the crop). Inside the trunk the LayerNorms are the DiT's pre-norms: they normalise only what each
attention and MLP branch reads, while the residual stream that the head reads keeps the input projection of the
latent, level included. ``tests/test_arc.py`` checks that a level change of the decoded spectrogram changes the
discriminator's input and its score.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from lmdm.model.dit import DiT, Tokens
from lmdm.model.masks import bidirectional_mask


class Discriminator(nn.Module):
    """``D(x_t, t, prompt) -> (b,)`` scores; see the module docstring.

    Args:
        dit: the pretrained DiT (copied; the original is not touched).
        n_layers: DiT blocks kept.
        head_width: channels of the convolutional head.
    """

    def __init__(self, dit: DiT, n_layers: int = 4, head_width: int = 128):
        super().__init__()
        if not 1 <= n_layers <= dit.cfg.n_layers:
            raise ValueError(f"n_layers must be 1..{dit.cfg.n_layers}, got {n_layers}")
        trunk = copy.deepcopy(dit)
        trunk.blocks = nn.ModuleList(list(trunk.blocks)[:n_layers])
        del trunk.final_ada, trunk.final_norm, trunk.out_proj  # the trunk ends in features, not velocity
        self.trunk = trunk.train().requires_grad_(True)
        self.n_layers = n_layers
        d = dit.cfg.d_model
        self.head = nn.Sequential(nn.Conv1d(d, head_width, 3, padding=1), nn.SiLU(),
                                  nn.Conv1d(head_width, head_width, 3, padding=1), nn.SiLU())
        self.out = nn.Linear(head_width, 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, has_text: torch.Tensor,
                region_start: int, controls: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of noisy sequences.

        Args:
            x_t: ``(b, frames, ch)`` the sequence re-noised to ``t``.
            t: ``(b,)`` timesteps.
            text, has_text: prompts ``(b, text_dim)``, ``(b,)``.
            region_start: first frame of the scored region (the rollout after the context).
            controls: ``(b, frames, control_dim)`` control channels, or None (no controls).

        Returns:
            ``(b,)`` scores (higher = more real).
        """
        b, n, _ = x_t.shape
        dev = x_t.device
        tok = Tokens(noisy=x_t, clean=torch.zeros_like(x_t), is_ctx=torch.zeros(n, dtype=torch.bool, device=dev),
                     seg=torch.zeros(n, dtype=torch.long, device=dev), t_seg=t[:, None],
                     pos=torch.arange(n, device=dev), mask=bidirectional_mask(n, dev), controls=controls)
        h = self.trunk.features(tok, self.trunk.text_cond(text, has_text))  # (b, n, d)
        h = self.head(h[:, region_start:].transpose(1, 2))
        return self.out(h.mean(-1))[:, 0]

    def num_params(self) -> int:
        """Parameters of the discriminator (trunk copy and head)."""
        return sum(p.numel() for p in self.parameters())
