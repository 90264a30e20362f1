"""ARC-Forcing rollouts: the student streams on its own cached generations, with gradient only through the final
x0 prediction of a random exit step of each block (Self-Forcing, Huang et al. 2025, section 3.2; DESIGN.md 5).

Per block ``n`` with exit step ``k_n`` drawn from all ``S`` steps (:func:`draw_exit_steps`; Self-Forcing draws
from ``1..S``, so the step that makes the final audio is trained too): :func:`lmdm.diffusion.sample` (the
sampler loop the streamers use) runs ``k_n - 1`` ping-pong steps without gradient through
:meth:`BlockCausalKVCache.step` and returns the x0 prediction of step ``k_n``, computed with gradient through
:meth:`BlockCausalKVCache.step_with_grad`. The block is detached before it enters the KV cache, so gradients never
cross blocks, and the window slides as in inference.

A rollout is what inference computes: with the same seed, prompt, controls and exit step, block ``n`` equals
``BlockCausalStreamer.next_block(controls, exit_step=k_n)`` without guidance (the noise is drawn in the streamer's
order: the block's initial noise, then ping-pong's fresh noise), and for ``k_n = S`` that is the plain block of
``lmdm generate`` (``tests/test_arc.py`` checks both).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdm.diffusion import sample
from lmdm.errors import UsageError
from lmdm.model.cache import BlockCausalKVCache
from lmdm.model.dit import DiT


@dataclass
class Rollout:
    """A rollout: ``blocks`` ``(b, N*B, ch)`` (gradient at each block's exit step), the same per block, and the
    exit steps used."""

    blocks: torch.Tensor
    per_block: list[torch.Tensor]
    exit_steps: list[int]


def draw_exit_steps(n_blocks: int, steps: int, generator: torch.Generator) -> list[int]:
    """One exit step per block, uniform over ``1..steps`` (all ``S`` steps, Self-Forcing section 3.2).

    Raises:
        UsageError: ``steps`` < 1 or ``n_blocks`` < 0.
    """
    if steps < 1 or n_blocks < 0:
        raise UsageError(f"need steps >= 1 and n_blocks >= 0, got steps={steps}, n_blocks={n_blocks}")
    return torch.randint(1, steps + 1, (n_blocks,), generator=generator, device=generator.device).tolist()


def as_cached(x: torch.Tensor, sigma: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """What a rollout's cache holds of the clean latents ``x`` ``(b, frames, ch)``: ``x + sigma * eps`` with
    ``sigma`` ``(b,)`` per stream and fresh ``eps`` drawn on ``generator`` (:func:`rollout`'s ``context_noise``), or
    ``x`` itself when ``sigma`` is None or ``x`` has no frames (nothing drawn)."""
    if sigma is None or x.shape[1] == 0:
        return x
    eps = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return x + sigma[:, None, None].to(x.dtype) * eps


def rollout(model: DiT, context: torch.Tensor, text: torch.Tensor, has_text: torch.Tensor,
            exit_steps: list[int], steps: int, generator: torch.Generator,
            controls: torch.Tensor | None = None, context_noise: float = 0.0) -> Rollout:
    """Stream ``len(exit_steps)`` blocks after a real ``context`` with the model's own block-causal KV cache.

    Args:
        model: the student DiT (parameters require grad).
        context: ``(b, W*B, ch)`` clean real context (bootstraps the cache).
        text, has_text: prompts ``(b, text_dim)``, ``(b,)`` (False = the block is generated unconditionally; no
            guidance: the few-step student runs without CFG).
        exit_steps: ``k_n`` in ``[1, steps]`` per block (:func:`draw_exit_steps`).
        steps: the student's ping-pong steps ``S`` (>= 1).
        generator: RNG of the initial noise and the ping-pong noise, block after block.
        controls: ``(b, N*B, control_dim)`` control channels of the rolled-out frames (``lmdm.control.features``,
            after control dropout), or None (no controls).
        context_noise: largest standard deviation of the Gaussian noise added to what the student reads as
            context (``ARCConfig.context_noise``; latents have unit variance): each stream draws its ``sigma``
            uniform in ``[0, context_noise]``, then the cache is filled with ``context + sigma * eps`` and every
            finished block is cached as ``x0 + sigma * eps`` (fresh ``eps`` each), while the returned blocks stay
            clean. Noise augmentation of the context, GameNGen (Valevski et al., ICLR 2025, arXiv 2408.14837,
            section 3.2): the student learns to continue from a context that is not exactly right, as its own is
            after minutes. 0 (default): nothing is drawn, the cache holds what inference caches.

    Returns:
        a :class:`Rollout`.

    Raises:
        UsageError: ``steps`` < 1, an exit step outside ``[1, steps]``, controls that do not cover the blocks, or
            a negative ``context_noise``.
    """
    if not context_noise >= 0:
        raise UsageError(f"context_noise must be >= 0 (0 = a clean context), got {context_noise}")
    if steps < 1:
        raise UsageError(f"a rollout needs at least 1 step, got {steps}")
    if any(not 1 <= k <= steps for k in exit_steps):
        raise UsageError(f"exit steps must be in [1, {steps}], got {list(exit_steps)}")
    b, _, ch = context.shape
    B, dev = model.cfg.block_frames, context.device
    if controls is not None and controls.shape[:2] != (b, len(exit_steps) * B):
        raise UsageError(f"controls must be (batch={b}, {len(exit_steps) * B}, control_dim), "
                         f"got {tuple(controls.shape)}")
    sigma = None
    if context_noise > 0:  # drawn first, so that a run without it draws exactly what it drew before
        sigma = (context_noise * torch.rand(b, generator=generator, device=generator.device)).to(dev)
    cache = BlockCausalKVCache(model, batch=b)
    cache.bootstrap(as_cached(context.detach(), sigma, generator))
    text_c = model.text_cond(text, has_text)
    blocks = []
    for n, k in enumerate(exit_steps):
        ctrl = None if controls is None else controls[:, n * B : (n + 1) * B].to(dev)

        def velocity(x: torch.Tensor, t: float, i: int, k: int = k, ctrl=ctrl) -> torch.Tensor:
            step = cache.step_with_grad if i == k - 1 else cache.step
            return step(x, torch.full((b,), t, device=dev), text_c, ctrl)

        # drawn on the generator's device (the CPU's: the same numbers on any device), then moved
        noise = torch.randn(b, B, ch, generator=generator, device=generator.device).to(dev)
        x0 = sample(velocity, noise, "pingpong", steps, generator, exit_step=k)
        blocks.append(x0)
        cache.advance(as_cached(x0.detach(), sigma, generator))
    return Rollout(torch.cat(blocks, 1), blocks, list(exit_steps))
