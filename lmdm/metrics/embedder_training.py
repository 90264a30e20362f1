"""``lmdm metrics train-embedder``: train the drift metrics' embedder on a built data set and store it with the
statistics of real music (its validation split) that drift is measured against.

The classifier step (two cross-entropy heads: collection and instrument) is a task of the one training loop,
``lmdm.train.loop``: AdamW with the loop's warm-up + cosine learning rate, checkpoints in a run folder (default
``runs/embedder``) that ``resume`` continues exactly, the CSV log and the tqdm bar. There is no averaging of the
weights: the loop's EMA runs with decay 0, so its copy is the trained weights themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from lmdm.audio.codec import CodecConfig
from lmdm.errors import LmdmError
from lmdm.metrics.embedder import Embedder, EmbedderConfig, default_embedder_path, save_embedder
from lmdm.train.dataset import LatentSet, load_latent_set, read_manifest
from lmdm.train.loop import (
    LoopSettings,
    LoopState,
    Task,
    optimizer_step,
    run_loop,
    settle_config,
    smoothed_loss,
    warmup_cosine,
    write_config,
)

WARMUP_STEPS = 100  # at most; a tenth of the steps for shorter runs
CKPT_EVERY, LOG_EVERY, KEEP_CHECKPOINTS = 250, 25, 2
# what a resume may change: only where the run lives (the data, labels, architecture and schedule must match)
CHANGEABLE = {"run_dir"}


class EmbedderTrainingError(LmdmError, RuntimeError):
    """An embedder training run that cannot start or resume as asked; the message says what to do."""


@dataclass(frozen=True)
class EmbedderRun:
    """A training run of the embedder, as saved in ``RUN/config.json`` (a resume must match it).

    Attributes:
        data: the data set folder.
        embedder: architecture and training, with the labels and input channels filled from the data set.
        codec: the mel codec of the latents.
        run_dir: the run folder (``config.json``, ``log.csv``, ``ckpt/``, ``final/``).
    """

    data: str
    embedder: EmbedderConfig
    codec: CodecConfig
    run_dir: str = "runs/embedder"


def lr_factor(step: int, cfg: EmbedderConfig) -> float:
    """Learning-rate factor of optimiser step ``step`` (0-based; times ``cfg.lr``): linear warm-up over
    ``min(100, steps // 10)`` steps, then cosine decay to 0 at ``cfg.steps`` (``lmdm.train.loop.warmup_cosine``)."""
    return warmup_cosine(step, min(WARMUP_STEPS, cfg.steps // 10), cfg.steps, 0.0)


def sample_batch(data: LatentSet, starts: torch.Tensor, n: int, cfg: EmbedderConfig, coll_of: torch.Tensor,
                 inst_of: torch.Tensor, gen: torch.Generator):
    """``n`` random crops of ``cfg.crop_frames`` frames from ``starts`` and their collection and instrument
    labels: ``(x (n, frames, channels) float32, collection (n,), instrument (n,))``."""
    idx = starts[torch.randint(len(starts), (n,), generator=gen)]
    x = data.latents[idx[:, None] + torch.arange(cfg.crop_frames)].float()
    w = data.frame_work[idx].long()
    return x, coll_of[w], inst_of[w]


def train_embedder(data_dir: str | Path, out: str | Path | None = None, cfg: EmbedderConfig = EmbedderConfig(),
                   codec: CodecConfig = CodecConfig(), progress: bool = True, *,
                   run_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train the embedder on a built data set's train split; report accuracy on its validation split.

    The model and its metrics are written together, atomically,
    to ``out`` (default: the bundled ``data/checkpoints/embedder``) and to ``RUN/final``.

    Args:
        data_dir: a folder built by ``lmdm data build``.
        out: the embedder folder to write.
        cfg: architecture and training (labels and input channels are filled from the data set and ``codec``).
        codec: the mel codec of the latents.
        progress: show the tqdm bars.
        run_dir: the run folder for checkpoints and the log (default ``runs/embedder``).
        resume: continue the run's latest checkpoint (without one, start); the data set, ``cfg`` and ``codec``
            must be the run's.

    Returns:
        ``{"val_collection_accuracy", "val_instrument_accuracy", "chance_collection", "chance_instrument",
        "val_examples", "train_steps", "real_music"}`` (accuracies in [0, 1]; ``real_music``: mean, std and
        number of windows of every drift metric on the validation split).

    Raises:
        DataError: ``data_dir`` is not a usable data set (no manifest, no validation works).
        EmbedderTrainingError: a fresh run into a run folder that already holds checkpoints, or a resume with
            another data set or settings.
    """
    rows = read_manifest(data_dir)
    colls = tuple(sorted({r["collection"] for r in rows}))
    insts = tuple(sorted({r["instrument"] for r in rows}))
    cfg = replace(cfg, collections=colls, instruments=insts, latent_channels=codec.channels)
    settled, run, existing = settle_config(EmbedderRun, EmbedderRun(data=str(data_dir), embedder=cfg, codec=codec),
                                           resume=resume, run_dir=run_dir, overrides=None, changeable=CHANGEABLE,
                                           error=EmbedderTrainingError)
    data = load_latent_set(data_dir, codec, progress=progress)
    train_starts = data.valid_starts("train", cfg.crop_frames)
    val_starts = data.valid_starts("val", cfg.crop_frames)  # before training: a data set without one fails now
    coll_of = torch.tensor([colls.index(r["collection"]) for r in rows])
    inst_of = torch.tensor([insts.index(r["instrument"]) for r in rows])
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the initialisation is part of the run
    model = Embedder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)

    def train_step(state: LoopState) -> dict:
        x, yc, yi = sample_batch(data, train_starts, cfg.batch_size, cfg, coll_of, inst_of, gen)
        model.train()
        _, lc, li = model(x)
        loss = F.cross_entropy(lc, yc) + F.cross_entropy(li, yi)
        lr = optimizer_step(loss, opt, model.parameters(), None)
        return {"loss": loss.item(), "lr": lr, "train_loss": smoothed_loss(state, loss.item())}

    exported: dict = {}

    def export_info(state: LoopState) -> dict:
        """Validation accuracy of the final weights (the loop asks once and saves it with the model to
        ``RUN/final`` and ``out``)."""
        final = state.ema.eval()
        gv = torch.Generator().manual_seed(cfg.seed + 1)
        hit_c = hit_i = total = 0
        with torch.no_grad():
            for _ in range(20):
                x, yc, yi = sample_batch(data, val_starts, 64, cfg, coll_of, inst_of, gv)
                _, lc, li = final(x)
                hit_c += int((lc.argmax(1) == yc).sum())
                hit_i += int((li.argmax(1) == yi).sum())
                total += len(yc)
        val_rows = [r for r in rows if r["split"] == "val"]
        metrics = {"val_collection_accuracy": hit_c / total, "val_instrument_accuracy": hit_i / total,
                   "chance_collection": max(sum(r["collection"] == c for r in val_rows) for c in colls) / len(val_rows),
                   "chance_instrument": max(sum(r["instrument"] == i for r in val_rows) for i in insts) / len(val_rows),
                   "val_examples": total, "train_steps": cfg.steps}
        exported.update(metrics=metrics)
        return exported

    task = Task(modules={"model": model}, optimizers={"": opt}, generator=gen, train_step=train_step,
                save_model=lambda path, m, info: save_embedder(path, m, codec, info["metrics"]),
                export_info=export_info,
                ema_decay=lambda n: 0.0,  # no averaging: lerp with weight 1 copies the weights exactly
                lr_factor={"": lambda s: lr_factor(s, cfg)})
    settings = LoopSettings(run_dir=run, steps=cfg.steps, ckpt_every=CKPT_EVERY, log_every=LOG_EVERY,
                            keep_checkpoints=KEEP_CHECKPOINTS, export_dir=str(out or default_embedder_path()),
                            columns=(("loss", ".4f"), ("lr", ".3e")), postfix=(("loss", "train_loss"),),
                            desc="training embedder", unit="step", progress=progress)
    write_config(run, settled)
    run_loop(settings, task, resume_from=existing)
    return exported["metrics"]
