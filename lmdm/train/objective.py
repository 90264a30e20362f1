"""The LMDM training objective: rectified-flow velocity regression on three layouts of clean context and noisy
target (LMDM, arXiv 2605.22717, section 3; DESIGN.md sections 1 and 5).

* ``block_causal``: teacher forcing over ``[clean 0..N-1 | noisy 0..N-1]`` with the block-causal sliding-window
  mask; each noisy chunk has its own timestep (so one crop trains N blocks at N noise levels).
* ``enc_dec``: ``[context | target]`` with the enc-dec mask; the context has 0..W chunks.
* ``outpainting``: the bidirectional baseline; context and target both noised to the same timestep, the clean
  context also given in the extra channels.

Dropouts make one checkpoint serve every use: prompt dropout (classifier-free guidance), context dropout
(starting a stream from nothing) and control dropout (with or without sketch/jam controls).

Every random choice of a batch is drawn first, for the whole global batch, on the run's CPU generator
(:func:`draw_batch`); :func:`loss_on_rows` then computes the loss of any rows of it on the model's device. So a
batch split over processes and micro-batches (``lmdm.train.distributed``) sees exactly the numbers of one process,
and :func:`training_loss` (both at once) draws the same stream as before the split existed.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from lmdm.control.features import GROUPS, control_input
from lmdm.device import module_device
from lmdm.diffusion import add_noise, velocity_target
from lmdm.model.dit import DiT
from lmdm.model.layouts import enc_dec_tokens, outpainting_tokens, teacher_forcing_tokens
from lmdm.train.config import TrainConfig


def logit_normal(shape: tuple[int, ...], mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """Timesteps ``sigmoid(N(mean, std))`` in (0, 1) (Esser et al. 2024, eq. 19), on the generator's device."""
    return torch.sigmoid(torch.randn(shape, generator=generator, device=generator.device) * std + mean)


def training_timesteps(shape: tuple[int, ...], cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Timesteps ``shape`` in (0, 1): logit-normal(``t_logit_mean``, ``t_logit_std``), each replaced with
    probability ``t_uniform`` by a uniform draw (so the ends near t = 0 and t = 1, where every block starts, are
    trained too)."""
    t = logit_normal(shape, cfg.t_logit_mean, cfg.t_logit_std, generator)
    if cfg.t_uniform > 0:
        u = torch.rand(shape, generator=generator, device=generator.device)
        t = torch.where(torch.rand(shape, generator=generator, device=generator.device) < cfg.t_uniform, u, t)
    return t


def _rand(shape, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def control_presence(b: int, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """``(b, groups)`` bool: which control groups each crop keeps under control dropout (all groups dropped with
    probability ``control_dropout``, then each remaining one with ``control_group_dropout``). ``cfg`` is any
    config with those two fields (ARC-Forcing's rollouts drop controls the same way, ``ARCConfig``)."""
    keep_any = _rand((b, 1), generator) >= cfg.control_dropout
    keep_group = _rand((b, len(GROUPS)), generator) >= cfg.control_group_dropout
    return keep_any & keep_group


def dropped_controls(features: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Control input ``(b, frames, 7)`` from features ``(b, frames, 4)`` with control dropout applied."""
    return control_input(features, control_presence(features.shape[0], cfg, generator).to(features.device))


def _context_chunks(cfg: TrainConfig, generator: torch.Generator) -> int:
    """Context length in chunks for enc-dec/outpainting crops: all ``W`` mostly, sometimes fewer, sometimes 0."""
    W = cfg.model.window_chunks
    u = _rand((), generator).item()
    if u < cfg.context_dropout:
        return 0
    if u < 0.3:
        return int(torch.randint(0, W + 1, (), generator=generator, device=generator.device))
    return W


@dataclass(frozen=True)
class BatchDraw:
    """Every random choice of one training batch of ``b`` crops of ``L = N*B`` frames (:func:`draw_batch`);
    immutable, so rows taken by :meth:`rows` never change the draw other micro-batches and ranks read.

    Attributes:
        mode: the layout ("block_causal", "enc_dec" or "outpainting").
        has_text: ``(b,)`` bool, False = prompt dropped.
        controls_kept: ``(b, groups)`` bool, control groups kept.
        t: ``(b, N)`` timestep per chunk (block_causal) or ``(b,)`` of the target.
        eps: ``(b, L, ch)`` (block_causal) or ``(b, B, ch)`` noise of the noisy tokens.
        context_drop: ``(b,)`` bool context dropout (block_causal), else None.
        context_chunks: ``k``, context chunks (enc_dec, outpainting).
        start: first frame of the window inside the crop (enc_dec, outpainting).
        context_eps: ``(b, k*B, ch)`` noise re-noising the context (outpainting), else None.
    """

    mode: str
    has_text: torch.Tensor
    controls_kept: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    context_drop: torch.Tensor | None = None
    context_chunks: int = 0
    start: int = 0
    context_eps: torch.Tensor | None = None

    def rows(self, rows: slice, device: torch.device | str | None = None) -> "BatchDraw":
        """The draw of rows ``rows`` of the batch, with its tensors on ``device`` (None: where they are)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[rows].to(device or v.device) if torch.is_tensor(v) else v
        return BatchDraw(**out)


def draw_batch(mode: str, b: int, frames: int, channels: int, cfg: TrainConfig,
               generator: torch.Generator) -> BatchDraw:
    """Draw every random choice of a batch of ``b`` crops of ``frames`` frames from ``generator`` (on its device),
    in the order :func:`training_loss` has always drawn them.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in ("block_causal", "enc_dec", "outpainting"):
        raise ValueError(f"unknown training mode {mode!r}")
    B, W = cfg.model.block_frames, cfg.model.window_chunks
    dev = generator.device
    has_text = _rand(b, generator) >= cfg.prompt_dropout
    kept = control_presence(b, cfg, generator)
    if mode == "block_causal":
        t = training_timesteps((b, frames // B), cfg, generator)
        eps = torch.randn((b, frames, channels), generator=generator, device=dev)
        drop = _rand(b, generator) < cfg.context_dropout
        return BatchDraw(mode, has_text, kept, t, eps, context_drop=drop)
    k = _context_chunks(cfg, generator)
    start = int(torch.randint(0, frames // B - W, (), generator=generator, device=dev)) * B  # any window in the crop
    t = training_timesteps((b,), cfg, generator)
    eps = torch.randn((b, B, channels), generator=generator, device=dev)
    ctx_eps = torch.randn((b, k * B, channels), generator=generator, device=dev) if mode == "outpainting" else None
    return BatchDraw(mode, has_text, kept, t, eps, context_chunks=k, start=start, context_eps=ctx_eps)


def loss_on_rows(model: DiT, draw: BatchDraw, x0: torch.Tensor, features: torch.Tensor, text: torch.Tensor,
                 cfg: TrainConfig) -> torch.Tensor:
    """Mean squared velocity error on the noisy tokens of some rows of a batch, on the model's device.

    Args:
        model: the DiT being trained (or its DDP / compiled wrapper).
        draw: the random choices of these rows (``draw_batch(...).rows(r)``).
        x0: ``(r, N*B, ch)`` clean latent crops of these rows.
        features: ``(r, N*B, 4)`` their control features.
        text: ``(r, 384)`` their caption embeddings.
        cfg: the training config (geometry).

    Returns:
        scalar loss (float32): the mean over these rows' noisy tokens and channels.
    """
    dev = module_device(model)
    draw = draw.rows(slice(None), dev)
    x0, features, text = x0.to(dev), features.to(dev), text.to(dev)
    b, L, ch = x0.shape
    B, W = cfg.model.block_frames, cfg.model.window_chunks
    controls = control_input(features, draw.controls_kept)
    if draw.mode == "block_causal":
        x_t = add_noise(x0, draw.eps, draw.t.repeat_interleave(B, dim=1))
        tok = teacher_forcing_tokens(x0, x_t, draw.t, W, controls, draw.context_drop)
        v = model(tok, text, draw.has_text)[:, L:]
        return F.mse_loss(v.float(), velocity_target(x0, draw.eps))
    k, start = draw.context_chunks, draw.start
    ctx = x0[:, start + (W - k) * B : start + W * B]
    tgt = x0[:, start + W * B : start + (W + 1) * B]
    ctrl = controls[:, start + W * B : start + (W + 1) * B]
    x_t = add_noise(tgt, draw.eps, draw.t)
    if draw.mode == "enc_dec":
        tok = enc_dec_tokens(ctx, x_t, draw.t, ctrl, start_frame=start + (W - k) * B)
    else:
        ctx_t = add_noise(ctx, draw.context_eps, draw.t)
        tok = outpainting_tokens(ctx, ctx_t, x_t, draw.t, ctrl, start_frame=start + (W - k) * B)
    v = model(tok, text, draw.has_text)[:, -B:]
    return F.mse_loss(v.float(), velocity_target(tgt, draw.eps))


def training_loss(model: DiT, mode: str, x0: torch.Tensor, features: torch.Tensor, text: torch.Tensor,
                  cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Mean squared velocity error on the noisy tokens of one batch (:func:`draw_batch`, then
    :func:`loss_on_rows` on all rows).

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

    Raises:
        ValueError: unknown mode.
    """
    draw = draw_batch(mode, x0.shape[0], x0.shape[1], x0.shape[2], cfg, generator)
    return loss_on_rows(model, draw, x0, features, text, cfg)
