"""Own streams: ARC rollouts that continue the student's own long streams, so that training meets the states a
stream reaches after minutes, not only those 4 blocks after real music.

Why: ARC's rollouts start from a real context and last ``N`` blocks (Self-Forcing's setting). The runaway measured
in issue 13 builds over 10-25 blocks at 2 steps and over minutes at 4 steps (the choir chorale), so no rollout of
4, 8 or 12 blocks ever meets it (the README's longer-rollout experiment). Rolling out hundreds of blocks per
iteration is out of reach on a CPU; the cache makes it unnecessary: a block-causal stream's state is its last
``W`` chunks and its prompt, so a stream can be continued where the previous iteration left it, ``N`` blocks per
iteration, for free. Self-Forcing++ (Cui et al. 2025, arXiv 2510.02283, section 3) trains on windows of rollouts
far longer than the teacher's horizon for the same reason.

An own-stream iteration (every ``own_stream_every``-th of an ARC run, :func:`own_stream_iteration`):

1. each of ``batch_size`` streams restarts from a real crop's context with probability ``N / own_stream_blocks``
   (and always on the first use), taking that crop's work, caption and prompt flag (prompt dropout as in the
   other iterations); the others keep theirs. With ``own_stream_cold_p`` a restart starts cold instead, from no
   context, as ``lmdm generate`` does: a stream's first seconds are where the choir chorale's loudness runaway
   begins;
2. every stream rolls out ``N`` blocks after its context with all ``S`` steps, as inference does (gradient through
   each block's final step only);
3. the generator is updated on the level anchor (``lmdm.train.arc.level``): the rollouts' decoded mel against a
   fresh real crop **of each stream's own work** (per-band statistics), plus the ceiling (no band louder than
   the corpus' loudest). The discriminator neither scores nor learns here: it has only ever seen real contexts;
4. each stream's context becomes the last ``W`` chunks of ``[context | rollout]``.

The streams are a module of buffers, so checkpoints carry them and a run resumes exactly.
"""
from __future__ import annotations

import torch
from torch import nn

from lmdm.train.dataset import LatentSet


class OwnStreams(nn.Module):
    """The state of ``batch`` student streams between own-stream iterations (buffers only, checkpointed).

    Buffers:
        context: ``(batch, W*B, ch)`` each stream's last ``W`` chunks (latent frames).
        caption: ``(batch,)`` long, row of ``LatentSet.captions`` each stream is prompted with.
        work: ``(batch,)`` long, the work that caption describes (where real crops for the level anchor come from).
        has_text: ``(batch,)`` bool, False = the stream runs unconditioned.
        blocks: ``(batch,)`` long, blocks generated since the stream's last restart (0 = never started).

    Args:
        batch: streams.
        context_frames: ``W * B`` latent frames of context.
        channels: latent channels.
    """

    def __init__(self, batch: int, context_frames: int, channels: int):
        super().__init__()
        self.register_buffer("context", torch.zeros(batch, context_frames, channels))
        self.register_buffer("caption", torch.zeros(batch, dtype=torch.long))
        self.register_buffer("work", torch.zeros(batch, dtype=torch.long))
        self.register_buffer("has_text", torch.zeros(batch, dtype=torch.bool))
        self.register_buffer("blocks", torch.zeros(batch, dtype=torch.long))

    def restarts(self, rollout_blocks: int, mean_blocks: int, generator: torch.Generator) -> torch.Tensor:
        """``(batch,)`` bool: which streams restart now: never started, or with probability ``rollout_blocks /
        mean_blocks`` (so a stream lasts ``mean_blocks`` blocks on average, geometrically distributed)."""
        u = torch.rand(len(self.blocks), generator=generator, device=generator.device).to(self.blocks.device)
        return (self.blocks == 0) | (u < rollout_blocks / mean_blocks)


def same_work_starts(data: LatentSet, work: torch.Tensor, frames: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch,)`` long: a uniformly drawn first frame of a crop of ``frames`` frames inside each given work.

    Raises:
        ValueError: a work is shorter than ``frames``.
    """
    length = data.work_frames[work.cpu()]
    if bool((length < frames).any()):
        raise ValueError(f"works {work[length < frames].tolist()} are shorter than a crop of {frames} frames")
    u = torch.rand(len(work), generator=generator, device=generator.device).cpu()
    return data.work_start[work.cpu()] + (u * (length - frames + 1)).long().clamp(max=length - frames)
