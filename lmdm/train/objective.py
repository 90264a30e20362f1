"""The LMDM training objective: rectified-flow velocity regression on three layouts of clean context and noisy
target (LMDM, arXiv 2605.22717, section 3; DESIGN.md sections 1 and 5).

* ``block_causal``: teacher forcing over ``[clean 0..N-1 | noisy 0..N-1]`` with the block-causal sliding-window
  mask; each noisy chunk has its own timestep (so one crop trains N blocks at N noise levels).
* ``enc_dec``: ``[context | target]`` with the enc-dec mask; the context has 0..W chunks.
* ``outpainting``: the bidirectional baseline; context and target both noised to the same timestep, the clean
  context also given in the extra channels.

Dropouts make one checkpoint serve every use: prompt dropout (classifier-free guidance), context dropout
(starting a stream from nothing) and control dropout (with or without sketch/jam controls).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmdm.control.features import GROUPS, control_input
from lmdm.diffusion import add_noise, velocity_target
from lmdm.model.dit import DiT
from lmdm.model.layouts import enc_dec_tokens, outpainting_tokens, teacher_forcing_tokens
from lmdm.train.config import TrainConfig


def logit_normal(shape: tuple[int, ...], mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """Timesteps ``sigmoid(N(mean, std))`` in (0, 1) (Esser et al. 2024, eq. 19)."""
    return torch.sigmoid(torch.randn(shape, generator=generator) * std + mean)


def training_timesteps(shape: tuple[int, ...], cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Timesteps ``shape`` in (0, 1): logit-normal(``t_logit_mean``, ``t_logit_std``), each replaced with
    probability ``t_uniform`` by a uniform draw (so the ends near t = 0 and t = 1, where every block starts, are
    trained too)."""
    t = logit_normal(shape, cfg.t_logit_mean, cfg.t_logit_std, generator)
    if cfg.t_uniform > 0:
        u = torch.rand(shape, generator=generator)
        t = torch.where(torch.rand(shape, generator=generator) < cfg.t_uniform, u, t)
    return t


def dropped_controls(features: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Control input ``(b, frames, 7)`` from features ``(b, frames, 4)`` with control dropout applied."""
    b = features.shape[0]
    keep_any = torch.rand(b, 1, generator=generator) >= cfg.control_dropout
    keep_group = torch.rand(b, len(GROUPS), generator=generator) >= cfg.control_group_dropout
    return control_input(features, keep_any & keep_group)


def _context_chunks(cfg: TrainConfig, generator: torch.Generator) -> int:
    """Context length in chunks for enc-dec/outpainting crops: all ``W`` mostly, sometimes fewer, sometimes 0."""
    W = cfg.model.window_chunks
    u = torch.rand((), generator=generator).item()
    if u < cfg.context_dropout:
        return 0
    if u < 0.3:
        return int(torch.randint(0, W + 1, (), generator=generator))
    return W


def training_loss(model: DiT, mode: str, x0: torch.Tensor, features: torch.Tensor, text: torch.Tensor,
                  cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Mean squared velocity error on the noisy tokens of one batch.

    Args:
        model: the DiT being trained.
        mode: "block_causal", "enc_dec" or "outpainting".
        x0: ``(b, N*B, ch)`` clean latent crops.
        features: ``(b, N*B, 4)`` control features of the crops.
        text: ``(b, 384)`` caption embeddings.
        cfg: the training config (dropouts, timestep distribution, geometry).
        generator: the run's RNG (noise, timesteps, dropouts).

    Returns:
        scalar loss (float32).
    """
    b, L, ch = x0.shape
    B, W = cfg.model.block_frames, cfg.model.window_chunks
    has_text = torch.rand(b, generator=generator) >= cfg.prompt_dropout
    controls = dropped_controls(features, cfg, generator)
    if mode == "block_causal":
        N = L // B
        t = training_timesteps((b, N), cfg, generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = add_noise(x0, eps, t.repeat_interleave(B, dim=1))
        drop = torch.rand(b, generator=generator) < cfg.context_dropout
        tok = teacher_forcing_tokens(x0, x_t, t, W, controls, drop)
        v = model(tok, text, has_text)[:, L:]
        return F.mse_loss(v.float(), velocity_target(x0, eps))
    k = _context_chunks(cfg, generator)
    start = int(torch.randint(0, L // B - W, (), generator=generator)) * B  # any window inside the crop
    ctx = x0[:, start + (W - k) * B : start + W * B]
    tgt = x0[:, start + W * B : start + (W + 1) * B]
    ctrl = controls[:, start + W * B : start + (W + 1) * B]
    t = training_timesteps((b,), cfg, generator)
    eps = torch.randn(tgt.shape, generator=generator)
    x_t = add_noise(tgt, eps, t)
    if mode == "enc_dec":
        tok = enc_dec_tokens(ctx, x_t, t, ctrl, start_frame=start + (W - k) * B)
    elif mode == "outpainting":
        ctx_t = add_noise(ctx, torch.randn(ctx.shape, generator=generator), t)
        tok = outpainting_tokens(ctx, ctx_t, x_t, t, ctrl, start_frame=start + (W - k) * B)
    else:
        raise ValueError(f"unknown training mode {mode!r}")
    v = model(tok, text, has_text)[:, -B:]
    return F.mse_loss(v.float(), velocity_target(tgt, eps))
