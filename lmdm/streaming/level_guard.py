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
training data's loudest window (:func:`level_ceilings`, quantile 1) this check never touches anything as loud as the
data; it only cuts what no real music here reaches (the frame ceiling below is stricter). It is not a limiter on sample peaks: a pluck that is peakier
than real ones (the harp of the README's crest paragraph) passes as long as its 16 ms frames stay below the frame
ceiling (below).

Off by default everywhere (``lmdm generate --level-guard``, ``lmdm jam --level-guard``, ``EngineConfig.level_guard``,
``generate``'s ``block_filter``, the drift study's ``level_guard``): the drift study measures the model, and a
guarded row is labelled as such. The ceiling travels with the checkpoint (``info["level_ceiling"]``, written by
``lmdm train`` and ``lmdm arc`` when they export: :func:`checkpoint_guard`), so a guarded stream needs no data set.

A second, optional ceiling checks each 16 ms mel frame (``frame_ceiling``, :data:`FRAME_QUANTILE` of the data's
frames, ``info["frame_level_ceiling"]``): a stream can sit at the data's loudest 0.4 s while single frames inside
it are louder than all but a few real frames in 100,000, and those frames are where the decoded waveform clips (the
README's harp, "A frame ceiling, and v4 guarded"). :func:`checkpoint_guard` uses both. At the
shipped quantile the frame ceiling lies below the 0.4 s one (2.68 against 2.80 normalised units on the bundled
checkpoints), and a window's level never exceeds its loudest frame's, so the frame check is the one that acts; the
0.4 s ceiling is what a checkpoint without a frame ceiling (or a drift-study system without ``frame_guard``) gets.
Neither sees a waveform peak that is not a loud frame (the README's clarinet).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmdm.errors import UsageError
from lmdm.train.arc.level import GAIN_UNITS_PER_DB, DecodedMel, momentary_level, with_gain


@dataclass
class LevelGuard:
    """``guard(block, context) -> block``, a streamer's ``block_filter`` (see the module docstring).

    Args:
        mel: the checkpoint's :class:`DecodedMel` (on the streamer's device).
        ceiling: the loudest momentary level allowed, normalised log-mel units (:func:`level_ceilings`).
        frame_ceiling: the loudest single mel frame (16 ms) allowed, same units (:func:`level_ceilings`:
            :data:`FRAME_QUANTILE` of the training data's frames); None = no frame check. A frame far louder than
            its 0.4 s window is where the decoder's waveform peaks above full scale.

    Attributes (what a report shows of how often and how hard the guard acted; constant memory in a live session):
        last_db: the gain applied to the latest block, per item, dB (0 where it passed).
        blocks: items of blocks seen; cut_blocks: of those, turned down; max_cut_db: the largest cut, dB (>= 0).
    """

    mel: DecodedMel
    ceiling: float
    frame_ceiling: float | None = None

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget what the guard did (a new stream); the ceiling stays."""
        self.last_db: list[float] = []
        self.blocks = self.cut_blocks = 0
        self.max_cut_db = 0.0

    def summary(self) -> dict:
        """``{"ceiling", "frame_ceiling", "blocks", "cut_blocks", "max_cut_db"}`` (see the attributes)."""
        return {"ceiling": self.ceiling, "frame_ceiling": self.frame_ceiling, "blocks": self.blocks, "cut_blocks": self.cut_blocks,
                "max_cut_db": self.max_cut_db}

    @torch.no_grad()
    def __call__(self, block: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Args:
            block: ``(b, B, ch)`` the new block's clean latent frames.
            context: ``(b, frames, ch)`` the frames before it (any number, 0 included); the decoder's look-back
                reads from its tail.

        Returns:
            ``(b, B, ch)``: ``block`` itself where no window is above the ceiling, else that item turned down.
        """
        db = guard_gain(block, context, self.mel, self.ceiling, self.frame_ceiling)
        self.last_db = db.tolist()
        self.blocks += len(self.last_db)
        self.cut_blocks += sum(d < 0 for d in self.last_db)
        self.max_cut_db = max([self.max_cut_db] + [-d for d in self.last_db])
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
def guard_gain(block: torch.Tensor, context: torch.Tensor, mel: DecodedMel, ceiling: float,
               frame_ceiling: float | None = None) -> torch.Tensor:
    """The gain that brings the loudest 0.4 s window inside ``block`` down to ``ceiling`` (and its loudest mel
    frame down to ``frame_ceiling``, when given), per item: 0 where it is already at or below. Windows inside the
    block only, so that the gain is the block's own excess (a window reaching back into a loud context would ask the
    block to pay for it).

    Args:
        block: ``(b, B, ch)`` latent frames; context: ``(b, frames, ch)`` the frames before them.
        mel: the codec's :class:`DecodedMel`.
        ceiling, frame_ceiling: normalised log-mel units (:func:`momentary_level`'s; a frame's level is the
            one-frame window's).

    Returns:
        ``(b,)`` dB, each <= 0.
    """
    back = lookback_frames(mel)
    ctx = context[:, context.shape[1] - min(back, context.shape[1]):]
    decoded = mel(torch.cat([ctx, block], 1).float())[:, ctx.shape[1] * mel.patch:]  # (b, B * patch, n_mels)
    levels = momentary_level(decoded, mel.std, min(mel.momentary_frames, decoded.shape[1]))  # (b, windows)
    excess = (levels.amax(1) - ceiling).clamp_min(0)
    if frame_ceiling is not None:
        frames = momentary_level(decoded, mel.std, 1)  # (b, B * patch): each mel frame's level
        excess = torch.maximum(excess, (frames.amax(1) - frame_ceiling).clamp_min(0))
    return -excess * mel.std / GAIN_UNITS_PER_DB


#: the frame ceiling's quantile of the training data's 16 ms mel-frame levels: one real frame in 1,000 is louder.
#: The loudest frame (quantile 1) still let a harp stream clip, and 0.99999 stopped the harp but not the vibraphone
#: chorale of the held-out prompts; at 0.999 (chosen on that chorale, then run on 24 ten-minute streams of both
#: prompt sets) one sample clipped in 240 minutes (README, "A stricter frame ceiling").
FRAME_QUANTILE = 0.999


def latent_set_ceiling(codec, data, quantile: float = 1.0, split: str = "train", frames: int | None = None) -> float:
    """The ``quantile`` (1 = the loudest) of the levels of every ``frames``-long window of ``data``'s ``split``,
    decoded through ``codec`` (``lmdm.train.arc.level.windowed_quantile``; ARC-Forcing measures its momentary
    ceiling the same way).

    Args:
        codec: the checkpoint's ``MelCodec``.
        data: a ``lmdm.train.dataset.LatentSet`` already in ``codec``'s latent (``encode_latent_set``).
        quantile: in [0, 1].
        split: "train" or "val".
        frames: the window, mel frames: None = 0.4 s (the guard's ``ceiling``), 1 = one 16 ms frame (its
            ``frame_ceiling``).

    Returns:
        normalised log-mel units (:func:`momentary_level`'s).

    Raises:
        ValueError: no work of ``split`` as long as one 0.4 s window, or ``quantile`` outside [0, 1].
    """
    from lmdm.train.arc.level import frame_level, windowed_quantile

    if frames not in (None, 1):
        raise ValueError(f"frames must be None (0.4 s) or 1 (one mel frame), got {frames!r}")
    return windowed_quantile(frame_level if frames == 1 else momentary_level, DecodedMel(codec),
                             split_works(data, split), quantile)


def split_works(data, split: str = "train") -> list[torch.Tensor]:
    """The ``(frames, ch)`` latent frames of each work of ``data``'s ``split`` (a ``LatentSet``)."""
    return [data.latents[s : s + n] for s, n, sp in zip(data.work_start.tolist(), data.work_frames.tolist(),
                                                         data.splits) if sp == split]


#: what a checkpoint stores for its guard: info key -> (its quantile, its window: None = 0.4 s, 1 = one frame)
STORED = {"level_ceiling": (1.0, None), "frame_level_ceiling": (FRAME_QUANTILE, 1)}


def guard_statistics() -> dict:
    """The ``lmdm.train.arc.level.decoded_summaries`` statistics :func:`ceilings_of` reads, by info key (so ARC's
    start-up adds them to its own and decodes the training split once)."""
    from lmdm.train.arc.level import frame_level

    return {key: frame_level if frames == 1 else momentary_level for key, (_, frames) in STORED.items()}


def ceilings_of(found: dict) -> dict:
    """``{"level_ceiling", "frame_level_ceiling"}`` from the values of :func:`guard_statistics` (as
    ``decoded_summaries`` returns them), each at its :data:`STORED` quantile."""
    return {key: float(np.quantile(found[key], quantile)) for key, (quantile, _) in STORED.items()}


def level_ceilings(codec, data) -> dict:
    """What ``lmdm train`` and ``lmdm arc`` store in an exported checkpoint's info for :func:`checkpoint_guard`:
    ``{"level_ceiling": the training split's loudest 0.4 s, "frame_level_ceiling": its FRAME_QUANTILE 16 ms
    frame}``, normalised log-mel units (:func:`latent_set_ceiling`; ``data`` as there), from one decode."""
    from lmdm.train.arc.level import decoded_summaries

    return ceilings_of(decoded_summaries(DecodedMel(codec), split_works(data), guard_statistics()))


def folder_ceilings(codec, data_dir) -> dict:
    """:func:`level_ceilings` of a data folder of ``lmdm data build`` (its latent cache is built on first use): what
    :func:`checkpoint_guard` falls back on, and what ``scripts/store_level_ceilings.py`` writes into a checkpoint.

    Raises:
        DataError: the folder has no manifest or no works.
    """
    from lmdm.train.dataset import encode_latent_set, load_latent_set

    return level_ceilings(codec, encode_latent_set(load_latent_set(data_dir, codec.cfg), codec))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def stored_ceiling(info: dict, quantile: float, frames: int | None) -> float | None:
    """The ceiling a checkpoint's ``info`` stores at ``quantile`` of ``frames``-long windows (None = 0.4 s,
    1 = one frame), or None where it stores none there (another quantile, or a checkpoint from before the guard)."""
    key = next((k for k, spec in STORED.items() if spec == (quantile, frames)), None)
    value = info.get(key) if key else None
    return float(value) if _finite(value) else None


def checkpoint_guard(ckpt, data_dir=None) -> LevelGuard:
    """A :class:`LevelGuard` for a loaded checkpoint, at its training data's loudest 0.4 s and its FRAME_QUANTILE
    16 ms frame: the ceilings its export stored (:func:`level_ceilings`), else measured on ``data_dir``'s training
    split. A checkpoint that stores only ``level_ceiling`` gets no frame check.

    Args:
        ckpt: a ``lmdm.checkpoint.Checkpoint``.
        data_dir: a data folder of ``lmdm data build``, used only when the checkpoint stores no ceiling.

    Raises:
        UsageError: the checkpoint stores no (finite) ``level_ceiling`` and no ``data_dir`` was given.
        DataError: ``data_dir`` has no manifest or no works.
    """
    ceiling, frame = ckpt.info.get("level_ceiling"), ckpt.info.get("frame_level_ceiling")
    if not _finite(ceiling):
        if data_dir is None:
            raise UsageError("this checkpoint stores no level_ceiling (checkpoints exported before the level guard); "
                             "a level guard needs one: re-export it with lmdm train/arc, or give the data folder it "
                             "was trained on to measure it")
        measured = folder_ceilings(ckpt.codec, data_dir)
        ceiling, frame = measured["level_ceiling"], measured["frame_level_ceiling"]
    device = next(ckpt.model.parameters()).device
    return LevelGuard(DecodedMel(ckpt.codec).to(device), float(ceiling), float(frame) if _finite(frame) else None)
