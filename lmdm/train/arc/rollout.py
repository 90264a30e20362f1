"""ARC-Forcing rollouts: the student streams on its own cached generations, with gradient only through the final
x0 prediction of a random exit step of each block (Self-Forcing, Huang et al. 2025, section 3.2; DESIGN.md 5).

Per block: draw ``k`` in ``[1, S-1]``; run ``k - 1`` ping-pong steps without gradient; the ``k``-th step runs with
gradient and its x0 prediction is the block. The block is detached before it enters the KV cache, so gradients
never cross blocks, and the window slides as in inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdm.diffusion import pingpong_schedule, pingpong_step, x0_from_velocity
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
            steps: int, generator: torch.Generator, hooks: list | None = None) -> Rollout:
    """Stream ``n_blocks`` blocks after a real ``context`` with the model's own block-causal KV cache.

    Args:
        model: the student DiT (parameters require grad).
        context: ``(b, W*B, ch)`` clean real context (bootstraps the cache).
        text, has_text: prompts ``(b, text_dim)``, ``(b,)`` (no guidance: the few-step student runs without CFG).
        n_blocks: ``N``.
        steps: the student's ping-pong steps ``S`` (>= 2).
        generator: RNG for noise and exit steps.
        hooks: if a list, ``(block, step, requires_grad)`` is appended for every step (tests check where
            gradient flows).

    Raises:
        ValueError: ``steps`` < 2.
    """
    if steps < 2:
        raise ValueError(f"ARC-Forcing needs at least 2 steps (exit step in [1, S-1]), got {steps}")
    b, _, ch = context.shape
    B = model.cfg.block_frames
    ts = pingpong_schedule(steps)
    cache = BlockCausalKVCache(model, batch=b)
    cache.bootstrap(context.detach())
    text_c = model.text_cond(text, has_text)
    blocks, exits = [], []
    for n in range(n_blocks):
        k = int(torch.randint(1, steps, (), generator=generator))
        x = torch.randn(b, B, ch, generator=generator)
        with torch.no_grad():
            for i in range(k - 1):
                t = torch.full((b,), float(ts[i]))
                v = cache.step(x, t, text_c.detach())
                x = pingpong_step(x, v, float(ts[i]), float(ts[i + 1]), torch.randn(x.shape, generator=generator))
                if hooks is not None:
                    hooks.append((n, i, v.requires_grad))
        t = torch.full((b,), float(ts[k - 1]))
        v = cache.step_with_grad(x, t, text_c)
        x0 = x0_from_velocity(x, v, t)
        if hooks is not None:
            hooks.append((n, k - 1, x0.requires_grad))
        blocks.append(x0)
        exits.append(k)
        cache.advance(x0.detach())
    return Rollout(torch.cat(blocks, 1), blocks, exits)
