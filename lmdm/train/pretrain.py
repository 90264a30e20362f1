"""``lmdm train``: pretraining an LMDM (AdamW, warm-up + cosine, EMA, bf16 autocast, validation) on the one training
loop of ``lmdm.train.loop`` (checkpoints, resume, log, export), on any device and on several processes started by
``torchrun`` (``lmdm.train.distributed``: DDP, each rank computing its rows of the global batch)."""
from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdm.audio.autoencoder import AutoencoderError, load_autoencoder
from lmdm.audio.codec import MelCodec
from lmdm.checkpoint import load_checkpoint, save_checkpoint
from lmdm.config import to_dict
from lmdm.device import autocast
from lmdm.errors import LmdmError
from lmdm.model.dit import DiT
from lmdm.streaming.level_guard import level_ceilings
from lmdm.train.config import TrainConfig
from lmdm.train.dataset import DataError, LatentSet, encode_latent_set, load_latent_set
from lmdm.train.distributed import SINGLE, Distributed, batch_plan, distributed_run, no_sync
from lmdm.train.loop import (
    LoopSettings,
    LoopState,
    Task,
    apply_gradients,
    run_loop,
    settle_config,
    smoothed_loss,
    warmup_cosine,
    write_config,
)
from lmdm.train.objective import draw_batch, loss_on_rows

# what ``--resume`` may change: the length, intervals, output folders and the CPU threads it runs on
# and how each process splits its share of the batch (micro_batch: the same global batch, so the same training)
CHANGEABLE = {"steps", "max_hours", "log_every", "val_every", "ckpt_every", "run_dir", "export_dir", "threads",
              "micro_batch"}


class TrainError(LmdmError, RuntimeError):
    """A training run that cannot start or resume as asked; the message says what to do."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports: steps done, smoothed training loss, last validation loss (None
    if none ran), wall-clock hours over all sessions, the inference checkpoint folder and the validation log."""

    step: int
    train_loss: float
    val_loss: float | None
    hours: float
    final_dir: Path
    history: list[dict]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up to ``lr`` over ``warmup_steps``, then
    cosine decay to ``lr * min_lr_ratio`` at ``steps`` (``lmdm.train.loop.warmup_cosine``)."""
    return cfg.lr * warmup_cosine(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def ema_decay_at(n: int, cfg: TrainConfig) -> float:
    """EMA decay of the update after step ``n`` (1-based): ``min(ema_decay, (1 + n) / (10 + n))``, so the average
    forgets the random initialisation quickly early on."""
    return min(cfg.ema_decay, (1 + n) / (10 + n))


def validation_loss(model: DiT, data: LatentSet, starts: torch.Tensor, cfg: TrainConfig,
                    mode: str = "block_causal", distributed: Distributed = SINGLE) -> float:
    """Loss of ``model`` in layout ``mode`` on fixed validation crops, noise and timesteps (no dropout, text on,
    controls off): comparable across checkpoints and runs with the same ``cfg.seed``, whatever the number of
    processes (each computes its rows of every validation batch in micro-batches; the mean is reduced across
    ranks).

    Raises:
        UsageError: ``batch_size`` does not split over the processes and ``micro_batch``.
    """
    vcfg = dataclasses.replace(cfg, prompt_dropout=0.0, context_dropout=0.0, control_dropout=1.0)
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    plan = batch_plan(cfg.batch_size, distributed, cfg.micro_batch)
    dev = next(model.parameters()).device
    losses = []
    model.eval()
    with torch.no_grad(), autocast(dev, cfg.bf16):
        for _ in range(cfg.val_batches):
            x0, feats, text = data.sample(starts, cfg.batch_size, cfg.crop_frames, g, rows=plan.rows)
            draw = draw_batch(mode, cfg.batch_size, cfg.crop_frames, x0.shape[-1], vcfg, g)
            for local, rows in plan.micro():
                losses.append(loss_on_rows(model, draw.rows(rows), x0[local], feats[local], text[local], vcfg).item())
    return distributed.mean(float(sum(losses) / len(losses)))


def run_codec(cfg: TrainConfig, run: Path, fresh: bool) -> MelCodec:
    """The codec of a run: the mel codec, with the learned latent of ``cfg.autoencoder`` if set.

    A fresh run copies the autoencoder folder to ``RUN/autoencoder``; a resumed run loads that copy, so the latent
    cannot change under a run.

    Raises:
        TrainError: the autoencoder is missing, was trained for another mel codec, or its latent size is not
            ``model.latent_channels``.
    """
    if cfg.autoencoder is None:
        return MelCodec(cfg.codec)
    copy = run / "autoencoder"
    if fresh or not copy.is_dir():
        try:
            load_autoencoder(cfg.autoencoder)  # check it before copying
        except AutoencoderError as e:
            raise TrainError(f"autoencoder {cfg.autoencoder}: {e}") from e
        run.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(cfg.autoencoder, copy)
    ae, ae_codec, _ = load_autoencoder(copy)
    if ae_codec != to_dict(cfg.codec):
        raise TrainError(f"autoencoder {cfg.autoencoder} was trained for the mel codec {ae_codec}, this run uses "
                         f"{to_dict(cfg.codec)}")
    if ae.cfg.latent_channels != cfg.model.latent_channels:
        raise TrainError(f"model.latent_channels ({cfg.model.latent_channels}) must equal the autoencoder's "
                         f"latent_channels ({ae.cfg.latent_channels})")
    return MelCodec(cfg.codec, ae)


def _initial_model(cfg: TrainConfig) -> DiT:
    """The model at step 0: seeded random initialisation, or the weights of ``init_from``.

    Raises:
        TrainError: ``init_from`` holds another model (only the zero-initialised melody piano roll may be added).
    """
    torch.manual_seed(cfg.seed)  # the initialisation is part of the run: same seed, same model
    model = DiT(cfg.model)
    if cfg.init_from:
        init = load_checkpoint(cfg.init_from, device="cpu")
        # the run may add the zero-initialised melody piano roll to a model without it (a fine-tune); nothing else
        grown = init.model.cfg.pitch_bins == 0 and cfg.model.pitch_bins > 0
        same = dataclasses.replace(init.model.cfg, pitch_bins=cfg.model.pitch_bins, pitch_low=cfg.model.pitch_low)
        if (same if grown else init.model.cfg) != cfg.model:
            raise TrainError(f"init_from {cfg.init_from} has model config {init.model.cfg}, this run {cfg.model}")
        missing, unexpected = model.load_state_dict(init.model.state_dict(), strict=False)
        if unexpected or set(missing) - ({"pitch_proj.weight"} if grown else set()):
            raise TrainError(f"init_from {cfg.init_from}: weights do not match (missing {missing}, unexpected {unexpected})")
    return model


def train(cfg: TrainConfig | None = None, resume: bool = False, progress: bool = True,
          run_dir: str | Path | None = None, overrides: dict | None = None, device: str = "cpu") -> TrainResult:
    """Train (or resume) a run: rectified-flow velocity regression on the three layouts of
    ``lmdm.train.objective`` (LMDM, arXiv 2605.22717, section 3) with the loop of ``lmdm.train.loop``.

    Args:
        cfg: the config; with ``resume`` it may be None (the run's saved config is used).
        resume: continue from the run's latest checkpoint (no progress is lost beyond it); without one, start.
        progress: show a tqdm bar.
        run_dir: overrides ``cfg.run_dir`` (needed when resuming without a config).
        overrides: fields to change after the config is settled (e.g. ``{"steps": 40000}`` to extend a resumed
            run); on resume only the fields in ``CHANGEABLE``.
        device: "cpu" (the default here; ``lmdm train --device`` defaults to "auto"), "auto", "cuda" or "mps"
            (``lmdm.device``). Started by ``torchrun`` with several processes, each process trains its share of
            every batch on its own device (``cuda:LOCAL_RANK``) and rank 0 writes; a run may resume on another
            number of processes, and on another device type (with a warning: the numerics change).

    Returns:
        a :class:`TrainResult`; the EMA weights are in ``RUN/final`` (and ``export_dir``).

    Raises:
        TrainError: a fresh run into a folder that already has checkpoints, a resume that changes the config,
            an ``init_from`` for another model, or a loss that is not finite.
        DataError: the data folder is missing or too small.
        ConfigError: an override names an unknown field.
        UsageError: the device is not available, or ``batch_size`` does not split over the processes and
            ``micro_batch``.
    """
    with distributed_run(device) as distributed:
        return _train(cfg, resume, progress, run_dir, overrides, distributed)


def _train(cfg: TrainConfig | None, resume: bool, progress: bool, run_dir: str | Path | None,
           overrides: dict | None, distributed: Distributed) -> TrainResult:
    """:func:`train` in this process's place of the run (``distributed``, inside :func:`distributed_run`); the
    arguments and errors are :func:`train`'s."""
    cfg, run, existing = settle_config(TrainConfig, cfg, resume=resume, run_dir=run_dir, overrides=overrides,
                                       changeable=CHANGEABLE, error=TrainError)
    plan = batch_plan(cfg.batch_size, distributed, cfg.micro_batch)  # refuse a batch that does not split, first
    distributed.barrier()  # every rank has read the run folder before rank 0 writes into it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed.main_first():  # rank 0 copies the autoencoder and writes the data cache; the others read them
        codec = run_codec(cfg, run, fresh=existing is None and distributed.is_main)
        data = encode_latent_set(load_latent_set(cfg.data, cfg.codec, progress=progress and distributed.is_main), codec)
    train_starts = data.valid_starts("train", cfg.crop_frames)
    try:
        val_starts = data.valid_starts("val", cfg.crop_frames)
    except DataError:
        val_starts = train_starts  # tiny data sets (tests) may have no long-enough validation work

    model = _initial_model(cfg).to(distributed.device)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed)  # on the CPU, identical on every rank (lmdm.train.distributed)
    ddp = distributed.wrap(model)
    forward = torch.compile(ddp) if cfg.compile else ddp
    modes = list(cfg.mode_mix)
    weights = torch.tensor([cfg.mode_mix[m] for m in modes], dtype=torch.float)

    def train_step(state: LoopState) -> dict:
        mode = modes[int(torch.multinomial(weights, 1, generator=gen))]
        x0, feats, text = data.sample(train_starts, cfg.batch_size, cfg.crop_frames, gen, rows=plan.rows)
        draw = draw_batch(mode, cfg.batch_size, cfg.crop_frames, x0.shape[-1], cfg, gen)
        model.train()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i, (local, rows) in enumerate(plan.micro()):
            with no_sync(ddp, sync=i == plan.accum - 1):  # DDP all-reduces in the last micro-batch's backward
                with autocast(distributed.device, cfg.bf16):
                    loss = loss_on_rows(forward, draw.rows(rows), x0[local], feats[local], text[local], cfg)
                (loss / plan.accum).backward()
            total += loss.item()
        loss = distributed.mean(total / plan.accum)  # the global batch's loss (equal rows per rank and micro-batch)
        if not math.isfinite(loss):
            raise TrainError(f"loss became {loss} at step {state.step}; lower lr or disable bf16")
        lr = apply_gradients(opt, model.parameters(), cfg.grad_clip)
        # tokens the model processed (the log's tokens_per_s, over all ranks): [clean | noisy] crops for
        # block_causal, [context | target] windows otherwise (not the whole crop they were cut from)
        per_crop = 2 * cfg.crop_frames if mode == "block_causal" else (draw.context_chunks + 1) * cfg.model.block_frames
        return {"mode": mode, "loss": loss, "lr": lr, "train_loss": smoothed_loss(state, loss),
                "tokens": cfg.batch_size * per_crop}

    def validate(state: LoopState) -> dict | None:
        if state.step % cfg.val_every and state.step != cfg.steps:
            return None
        return {"train_loss": state.latest["train_loss"],
                "val_loss": validation_loss(state.ema, data, val_starts, cfg, distributed=distributed)}

    def export_info(state: LoopState) -> dict:
        return {"step": state.step, "train_hours_cpu": round(state.elapsed_s / 3600, 3),
                "val_loss": state.latest.get("val_loss"), "train_loss": state.latest.get("train_loss"),
                "data": cfg.data, "data_hours": round(float(data.work_frames.sum()) / cfg.codec.frame_rate / 3600, 3),
                "train_config": to_dict(cfg), **level_ceilings(codec, data)
                } | ({} if cfg.sampler is None else {"sampler": cfg.sampler})

    task = Task(modules={"model": model}, optimizers={"": opt}, generator=gen, train_step=train_step,
                save_model=lambda path, m, info: save_checkpoint(path, m, codec, info), export_info=export_info,
                ema_decay=lambda n: ema_decay_at(n, cfg),
                lr_factor={"": lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)},
                validate=validate)
    settings = LoopSettings(run_dir=run, steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                            keep_checkpoints=cfg.keep_checkpoints, max_hours=cfg.max_hours, export_dir=cfg.export_dir,
                            columns=(("mode", ""), ("loss", ".5f"), ("lr", ".3e"), ("val_loss", ".5f")),
                            throughput="tokens", postfix=(("loss", "train_loss"), ("val", "val_loss")),
                            desc="training", unit="step", progress=progress, distributed=distributed)
    if distributed.is_main:
        write_config(run, cfg)
    out = run_loop(settings, task, resume_from=existing)
    st = out.state
    return TrainResult(step=st.step, train_loss=st.latest.get("train_loss", float("nan")),
                       val_loss=st.latest.get("val_loss"), hours=out.hours, final_dir=out.final_dir,
                       history=st.history)
