"""A level guard: a block that decodes louder than the training data's loudest 0.4 s is turned down before the
stream caches it.

Why (issue 13): an LMDM streams on its own blocks, so a block that comes out too loud is the context of the next
one, and the KV cache feeds the excess back. On the ARC students this is the burst of the README's drift study: a
choir chorale that plays at the data's level for minutes, then one minute at +3 to +5 LUFS with a fifth of its
samples clipped, then back. Training-side terms (the level anchor, the band, momentary and crest ceilings, level
kicks; ``lmdm.train.arc.level``) make the bursts rarer and smaller but leave some training seeds with one. The
guard closes the loop at inference instead: the feedback path of error accumulation is the cache, so the guard sits
between the sampler's output and the cache, as an automatic gain control sits in a broadcast chain.

What it does: each new block ``(b, B, ch)`` is decoded to the codec's normalised log-mel with the decoder's
look-back (``DecodedMel``); if any 0.4 s window inside the block (EBU R 128's momentary window, without
K-weighting: ``lmdm.train.arc.level.momentary_level``) is above ``ceiling``, the block is played quieter by the
excess (``with_gain``: every band shifted by the gain, silence kept, re-encoded) and that quieter block is what the
stream returns and caches. A block at or below the ceiling passes unchanged, bit for bit. With ``ceiling`` the
training data's loudest window (:func:`data_ceiling`, quantile 1) the guard never touches anything as loud as the
data; it only cuts what no real music here reaches. It is not a limiter on peaks: a pluck that is peakier than
real ones (the harp of the README's crest paragraph) at the data's level passes.

Off by default everywhere (``generate``'s ``block_filter``, the drift study's ``level_guard``): the drift study
measures the model, and a guarded row is labelled as such.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdm.train.arc.level import GAIN_UNITS_PER_DB, DecodedMel, momentary_level, with_gain


@dataclass
class LevelGuard:
    """``guard(block, context) -> block``, a streamer's ``block_filter`` (see the module docstring).

    Args:
        mel: the checkpoint's :class:`DecodedMel` (on the streamer's device).
        ceiling: the loudest momentary level allowed, normalised log-mel units (:func:`data_ceiling`).

    Attributes:
        cuts_db: the gain applied to each guarded block, dB (0 where it passed), one list per call: what a
            report shows of how often and how hard the guard acted.
    """

    mel: DecodedMel
    ceiling: float

    def __post_init__(self) -> None:
        self.cuts_db: list[list[float]] = []

    @torch.no_grad()
    def __call__(self, block: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Args:
            block: ``(b, B, ch)`` the new block's clean latent frames.
            context: ``(b, frames, ch)`` the frames before it (any number, 0 included); the decoder's look-back
                reads from its tail.

        Returns:
            ``(b, B, ch)``: ``block`` itself where no window is above the ceiling, else that item turned down.
        """
        db = guard_gain(block, context, self.mel, self.ceiling)
        self.cuts_db.append(db.tolist())
        if not bool((db < 0).any()):
            return block
        back = lookback_frames(self.mel)
        ctx = context[:, context.shape[1] - min(back, context.shape[1]):]
        quieter = with_gain(torch.cat([ctx, block], 1), self.mel, db)[:, ctx.shape[1]:]
        keep = (db >= 0)[:, None, None]
        return torch.where(keep, block, quieter.to(block.dtype))


def lookback_frames(mel: DecodedMel) -> int:
    """Latent frames before a block that its decoded mel depends on (the autoencoder's ``decoder_context``)."""
    return 0 if mel.autoencoder is None else mel.autoencoder.cfg.decoder_context


@torch.no_grad()
def guard_gain(block: torch.Tensor, context: torch.Tensor, mel: DecodedMel, ceiling: float) -> torch.Tensor:
    """The gain that brings the loudest 0.4 s window inside ``block`` down to ``ceiling``, per item: 0 where it
    is already at or below it. Windows inside the block only, so that the gain is the block's own excess (a window
    reaching back into a loud context would ask the block to pay for it).

    Args:
        block: ``(b, B, ch)`` latent frames; context: ``(b, frames, ch)`` the frames before them.
        mel: the codec's :class:`DecodedMel`.
        ceiling: normalised log-mel units (:func:`momentary_level`'s).

    Returns:
        ``(b,)`` dB, each <= 0.
    """
    back = lookback_frames(mel)
    ctx = context[:, context.shape[1] - min(back, context.shape[1]):]
    decoded = mel(torch.cat([ctx, block], 1).float())[:, ctx.shape[1] * mel.patch:]  # (b, B * patch, n_mels)
    levels = momentary_level(decoded, mel.std, min(mel.momentary_frames, decoded.shape[1]))  # (b, windows)
    excess = (levels.amax(1) - ceiling).clamp_min(0)
    return -excess * mel.std / GAIN_UNITS_PER_DB


def data_ceiling(codec, data_dir, quantile: float = 1.0, split: str = "train", progress: bool = False) -> float:
    """The ``quantile`` (1 = the loudest) of the 0.4 s momentary levels of a data set's ``split``, decoded through
    ``codec`` as a stream is (``lmdm.train.arc.level.momentary_ceiling``; ARC-Forcing measures its momentary
    ceiling the same way): the guard's ceiling, normalised log-mel units.

    Args:
        codec: the checkpoint's ``MelCodec``.
        data_dir: a data folder of ``lmdm data build`` (its latent cache is built on first use).
        quantile: in [0, 1].
        split: "train" or "val".

    Raises:
        DataError: the folder has no manifest or no works.
        ValueError: no work of ``split`` as long as one window, or ``quantile`` outside [0, 1].
    """
    from lmdm.train.arc.level import momentary_ceiling
    from lmdm.train.dataset import encode_latent_set, load_latent_set

    data = encode_latent_set(load_latent_set(data_dir, codec.cfg, progress=progress), codec)
    works = [data.latents[s : s + n] for s, n, sp in zip(data.work_start.tolist(), data.work_frames.tolist(),
                                                          data.splits) if sp == split]
    return momentary_ceiling(DecodedMel(codec), works, quantile)
