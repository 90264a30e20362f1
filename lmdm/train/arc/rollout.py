"""ARC-Forcing rollouts: the student streams on its own cached generations, with gradient only through the final
x0 prediction of a random exit step of each block (Self-Forcing, Huang et al. 2025, section 3.2; DESIGN.md 5).

Per block: draw ``k`` in ``[1, S-1]``; :func:`lmdm.diffusion.sample` (the sampler loop streamers use) runs
``k - 1`` ping-pong steps without gradient through :meth:`BlockCausalKVCache.step` and returns the x0
prediction of step ``k``, computed with gradient through :meth:`BlockCausalKVCache.step_with_grad`. The block is
detached before it enters the KV cache, so gradients never cross blocks, and the window slides as in inference.
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
    exit steps drawn."""

    blocks: torch.Tensor
    per_block: list[torch.Tensor]
    exit_steps: list[int]


def rollout(model: DiT, context: torch.Tensor, text: torch.Tensor, has_text: torch.Tensor, n_blocks: int,
            steps: int, generator: torch.Generator) -> Rollout:
    """Stream ``n_blocks`` blocks after a real ``context`` with the model's own block-causal KV cache.

    Args:
        model: the student DiT (parameters require grad).
        context: ``(b, W*B, ch)`` clean real context (bootstraps the cache).
        text, has_text: prompts ``(b, text_dim)``, ``(b,)`` (no guidance: the few-step student runs without CFG).
        n_blocks: ``N``.
        steps: the student's ping-pong steps ``S`` (>= 2).
        generator: RNG for the exit steps, the initial noise and the ping-pong noise, in that order per block.

    Returns:
        a :class:`Rollout`.

    Raises:
        UsageError: ``steps`` < 2.
    """
    if steps < 2:
        raise UsageError(f"ARC-Forcing needs at least 2 steps (exit step in [1, S-1]), got {steps}")
    b, _, ch = context.shape
    B, dev = model.cfg.block_frames, context.device
    cache = BlockCausalKVCache(model, batch=b)
    cache.bootstrap(context.detach())
    text_c = model.text_cond(text, has_text)
    blocks, exits = [], []
    for _ in range(n_blocks):
        k = int(torch.randint(1, steps, (), generator=generator, device=generator.device))

        def velocity(x: torch.Tensor, t: float, i: int, k: int = k) -> torch.Tensor:
            step = cache.step_with_grad if i == k - 1 else cache.step
            return step(x, torch.full((b,), t, device=dev), text_c)

        # drawn on the generator's device (the CPU's: the same numbers on any device), then moved
        noise = torch.randn(b, B, ch, generator=generator, device=generator.device).to(dev)
        x0 = sample(velocity, noise, "pingpong", steps, generator, exit_step=k)
        blocks.append(x0)
        exits.append(k)
        cache.advance(x0.detach())
    return Rollout(torch.cat(blocks, 1), blocks, exits)
