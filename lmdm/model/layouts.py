"""Token layouts for the uncached forward pass: one function per way of arranging context and target.

Each returns a :class:`~lmdm.model.dit.Tokens` for ``DiT.forward``. Training uses them to build its batches;
tests and benchmarks use them as the slow, obviously-correct reference that the KV caches must reproduce.

Every tensor a layout creates (masks, positions, flags) is on the device of its latent inputs.

Shapes: ``b`` batch, ``B`` block frames, ``ch`` latent channels, ``K`` control channels.
"""
from __future__ import annotations

import torch

from lmdm.model.dit import Tokens
from lmdm.model.masks import bidirectional_mask, block_causal_mask, chunk_layout, enc_dec_mask

NAN = float("nan")


def _controls(controls: torch.Tensor | None, b: int, n_before: int, n: int) -> torch.Tensor | None:
    """Place target controls ``(b, n, K)`` after ``n_before`` control-free tokens."""
    if controls is None:
        return None
    return torch.cat([controls.new_zeros(b, n_before, controls.shape[-1]), controls], 1)


def block_causal_stream_tokens(history: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, window: int,
                               controls: torch.Tensor | None = None, start_chunk: int = 0) -> Tokens:
    """``[clean chunks 0..n-1 | noisy chunk n]`` with the block-causal mask: what the cached streamer computes.

    Args:
        history: ``(b, n*B, ch)`` all clean chunks generated so far (the whole stream: through the layers a
            chunk's keys depend on older chunks than the window, so the exact reference needs all of them).
        x_t: ``(b, B, ch)`` noisy target.
        t: ``(b,)`` timestep of the target.
        window: ``W``.
        controls: ``(b, B, K)`` target controls or None.
        start_chunk: absolute index of the first history chunk.
    """
    b, B, ch = x_t.shape
    n = history.shape[1] // B
    dev = x_t.device
    chunk, clean = chunk_layout(n, [n], B, dev)
    chunk = chunk + start_chunk
    zeros = x_t.new_zeros(b, n * B, ch)
    return Tokens(
        noisy=torch.cat([zeros, x_t], 1),
        clean=torch.cat([history, torch.zeros_like(x_t)], 1),
        is_ctx=clean,
        seg=(~clean).long(),
        t_seg=torch.stack([torch.full_like(t, NAN), t], 1),
        pos=chunk * B + torch.arange(len(chunk), device=dev) % B,
        mask=block_causal_mask(chunk, clean, chunk, clean, window),
        controls=_controls(controls, b, n * B, B),
    )


def teacher_forcing_tokens(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, window: int,
                           controls: torch.Tensor | None = None, context_drop: torch.Tensor | None = None) -> Tokens:
    """Training layout of the block-causal LMDM: ``[clean 0..N-1 | noisy 0..N-1]`` (teacher forcing).

    Every noisy chunk ``i`` is denoised from the clean chunks ``i-W .. i-1``, so one pass trains ``N`` blocks.

    Args:
        x0: ``(b, N*B, ch)`` clean latents.
        x_t: ``(b, N*B, ch)`` noisy latents (each chunk at its own timestep).
        t: ``(b, N)`` timestep per chunk.
        window: ``W``.
        controls: ``(b, N*B, K)`` controls of the noisy chunks, or None.
        context_drop: ``(b,)`` bool; True hides all clean chunks from that item's noisy chunks (context dropout).
    """
    b, L, ch = x0.shape
    N = t.shape[1]
    B = L // N
    chunk, clean = chunk_layout(N, list(range(N)), B, x0.device)
    mask = block_causal_mask(chunk, clean, chunk, clean, window)
    if context_drop is not None:
        hide = (~clean)[:, None] & clean[None, :]
        mask = mask[None] & ~(context_drop[:, None, None] & hide[None])
    return Tokens(
        noisy=torch.cat([torch.zeros_like(x0), x_t], 1),
        clean=torch.cat([x0, torch.zeros_like(x0)], 1),
        is_ctx=clean,
        seg=torch.where(clean, 0, chunk + 1),
        t_seg=torch.cat([torch.full_like(t[:, :1], NAN), t], 1),
        pos=chunk * B + torch.arange(len(chunk), device=x0.device) % B,
        mask=mask,
        controls=_controls(controls, b, L, L),
    )


def enc_dec_tokens(context: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   controls: torch.Tensor | None = None, start_frame: int = 0) -> Tokens:
    """``[context (C frames, clean) | target (B frames, noisy)]`` with the enc-dec mask.

    Args:
        context: ``(b, C, ch)`` clean context (C may be 0).
        x_t: ``(b, B, ch)`` noisy target; ``t``: ``(b,)``.
        controls: ``(b, B, K)`` or None.
        start_frame: absolute frame index of the first context frame.
    """
    b, C, ch = context.shape
    B, dev = x_t.shape[1], x_t.device
    is_ctx = torch.arange(C + B, device=dev) < C
    return Tokens(
        noisy=torch.cat([torch.zeros_like(context), x_t], 1),
        clean=torch.cat([context, torch.zeros_like(x_t)], 1),
        is_ctx=is_ctx,
        seg=(~is_ctx).long(),
        t_seg=torch.stack([torch.full_like(t, NAN), t], 1),
        pos=start_frame + torch.arange(C + B, device=dev),
        mask=enc_dec_mask(C, B, dev),
        controls=_controls(controls, b, C, B),
    )


def outpainting_tokens(context: torch.Tensor, context_t: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                       controls: torch.Tensor | None = None, start_frame: int = 0) -> Tokens:
    """The baseline: bidirectional attention over ``[context | target]``, every frame noisy at timestep ``t``.

    The context is re-noised at every step (``context_t``) and also given clean in the extra channels with the
    flag set, as in inpainting/outpainting DiTs (stable-audio-tools). Nothing here can be cached: every key
    depends on the step.

    Args:
        context: ``(b, C, ch)`` clean context; ``context_t``: ``(b, C, ch)`` the same, noised to ``t``.
        x_t: ``(b, B, ch)`` noisy target; ``t``: ``(b,)``.
    """
    b, C, ch = context.shape
    B, dev = x_t.shape[1], x_t.device
    is_ctx = torch.arange(C + B, device=dev) < C
    return Tokens(
        noisy=torch.cat([context_t, x_t], 1),
        clean=torch.cat([context, torch.zeros_like(x_t)], 1),
        is_ctx=is_ctx,
        seg=torch.zeros(C + B, dtype=torch.long, device=dev),
        t_seg=t[:, None],
        pos=start_frame + torch.arange(C + B, device=dev),
        mask=bidirectional_mask(C + B, dev),
        controls=_controls(controls, b, C, B),
    )
