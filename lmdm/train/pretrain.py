"""``lmdm train``: the training loop (AdamW, warm-up + cosine, EMA, bf16 autocast, validation, checkpoints, resume)."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdm.checkpoint import load_checkpoint, save_checkpoint
from lmdm.config import from_dict, to_dict
from lmdm.model.dit import DiT
from lmdm.train.config import TrainConfig
from lmdm.train.dataset import DataError, LatentSet, load_latent_set
from lmdm.train.objective import training_loss
from lmdm.train.state import latest_checkpoint, load_training_state, save_training_state
from lmdm.errors import LmdmError


class TrainError(LmdmError, RuntimeError):
    """A training run that cannot start or resume as asked; the message says what to do."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    step: int
    train_loss: float
    val_loss: float | None
    hours: float
    final_dir: Path
    history: list[dict]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _reconcile(saved: TrainConfig, given: TrainConfig | None) -> TrainConfig:
    """On resume the run's own config wins; a given config may change only the length, intervals and output folders."""
    if given is None:
        return saved
    a, b = to_dict(saved), to_dict(given)
    changeable = {"steps", "max_hours", "log_every", "val_every", "ckpt_every", "run_dir", "export_dir"}
    differ = sorted(k for k in a if a[k] != b[k] and k not in changeable)
    if differ:
        raise TrainError(f"--resume with a config that differs from the run's in {differ}; only "
                         f"{sorted(changeable)} may change. Use another run_dir for a new run.")
    return dataclasses.replace(saved, **{k: getattr(given, k) for k in changeable})


def validation_loss(model: DiT, data: LatentSet, starts: torch.Tensor, cfg: TrainConfig,
                    mode: str = "block_causal") -> float:
    """Loss of ``model`` in layout ``mode`` on fixed validation crops, noise and timesteps (no dropout, text on,
    controls off): comparable across checkpoints and runs with the same ``cfg.seed``."""
    vcfg = dataclasses.replace(cfg, prompt_dropout=0.0, context_dropout=0.0, control_dropout=1.0)
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    losses = []
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        for _ in range(cfg.val_batches):
            x0, feats, text = data.sample(starts, cfg.batch_size, cfg.crop_frames, g)
            losses.append(training_loss(model, mode, x0, feats, text, vcfg, g).item())
    return float(sum(losses) / len(losses))


def train(cfg: TrainConfig | None = None, resume: bool = False, progress: bool = True,
          run_dir: str | Path | None = None, overrides: dict | None = None) -> TrainResult:
    """Train (or resume) a run.

    Args:
        cfg: the config; with ``resume`` it may be None (the run's saved config is used).
        resume: continue from the run's latest checkpoint (no progress is lost beyond it).
        progress: show a tqdm bar.
        run_dir: overrides ``cfg.run_dir`` (needed when resuming without a config).
        overrides: fields to change after the config is settled (e.g. ``{"steps": 40000}`` to extend a resumed
            run); on resume only the fields ``_reconcile`` allows.

    Raises:
        TrainError: a fresh run into a folder that already has checkpoints, or a resume that changes the config.
        DataError: the data folder is missing or too small.
    """
    from tqdm.auto import tqdm

    if cfg is None and run_dir is None:
        raise TrainError("give a config (--config) or, to resume, the run folder (--run-dir)")
    run = Path(run_dir or cfg.run_dir)
    existing = latest_checkpoint(run)
    if existing is not None and not resume:
        raise TrainError(f"{run} already holds checkpoints ({existing.name}); pass --resume to continue it, "
                         "or choose another run_dir")
    if resume and existing is not None:
        saved = from_dict(TrainConfig, json.loads((run / "config.json").read_text()), where=str(run / "config.json"))
        cfg = _reconcile(saved, cfg)
    elif cfg is None:
        raise TrainError(f"nothing to resume in {run} and no config given")
    if overrides:
        changed = dataclasses.replace(cfg, **overrides)
        cfg = _reconcile(cfg, changed) if resume and existing is not None else changed
    if run_dir is not None:
        cfg = dataclasses.replace(cfg, run_dir=str(run))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    data = load_latent_set(cfg.data, cfg.codec, progress=progress)
    train_starts = data.valid_starts("train", cfg.crop_frames)
    try:
        val_starts = data.valid_starts("val", cfg.crop_frames)
    except DataError:
        val_starts = train_starts  # tiny data sets (tests) may have no long-enough validation work

    torch.manual_seed(cfg.seed)  # the initialisation is part of the run: same seed, same model
    model = DiT(cfg.model)
    if cfg.init_from:
        init = load_checkpoint(cfg.init_from)
        # the run may add the zero-initialised melody piano roll to a model without it (a fine-tune); nothing else
        grown = init.model.cfg.pitch_bins == 0 and cfg.model.pitch_bins > 0
        same = dataclasses.replace(init.model.cfg, pitch_bins=cfg.model.pitch_bins, pitch_low=cfg.model.pitch_low)
        if (same if grown else init.model.cfg) != cfg.model:
            raise TrainError(f"init_from {cfg.init_from} has model config {init.model.cfg}, this run {cfg.model}")
        missing, unexpected = model.load_state_dict(init.model.state_dict(), strict=False)
        if unexpected or set(missing) - ({"pitch_proj.weight"} if grown else set()):
            raise TrainError(f"init_from {cfg.init_from}: weights do not match (missing {missing}, unexpected {unexpected})")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    step, elapsed_before, history = 0, 0.0, []
    if resume and existing is not None:
        ema, st = load_training_state(existing, model, opt, gen)
        step, elapsed_before, history = st["step"], st.get("elapsed_s", 0.0), st.get("history", [])
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    forward = torch.compile(model) if cfg.compile else model
    ema_model = DiT(cfg.model)
    modes = list(cfg.mode_mix)
    weights = torch.tensor([cfg.mode_mix[m] for m in modes], dtype=torch.float)
    log_path = run / "log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "mode", "loss", "lr", "val_loss", "elapsed_s", "tokens_per_s"])
    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not progress)
    running, last_val, tokens, t_log = None, history[-1]["val_loss"] if history else None, 0, time.time()

    def checkpoint() -> None:
        save_training_state(run, step, model, ema, opt, gen,
                            {"elapsed_s": elapsed_before + time.time() - t0, "history": history},
                            keep=cfg.keep_checkpoints)

    try:
        while step < cfg.steps:
            if cfg.max_hours and (elapsed_before + time.time() - t0) / 3600 >= cfg.max_hours:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            mode = modes[int(torch.multinomial(weights, 1, generator=gen))]
            x0, feats, text = data.sample(train_starts, cfg.batch_size, cfg.crop_frames, gen)
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = training_loss(forward, mode, x0, feats, text, cfg, gen)
            if not torch.isfinite(loss):
                raise TrainError(f"loss became {loss.item()} at step {step}; lower lr or disable bf16")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(d).add_(v.float(), alpha=1 - d)
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            tokens += x0.shape[0] * x0.shape[1] * (2 if mode == "block_causal" else 1)
            val = None
            if step % cfg.val_every == 0 or step == cfg.steps:
                ema_model.load_state_dict(ema)
                val = last_val = validation_loss(ema_model, data, val_starts, cfg)
                history.append({"step": step, "train_loss": running, "val_loss": val})
            if step % cfg.log_every == 0 or val is not None:
                now = time.time()
                log.writerow([step, mode, f"{loss.item():.5f}", f"{lr_at(step - 1, cfg):.3e}",
                              "" if val is None else f"{val:.5f}", f"{elapsed_before + now - t0:.1f}",
                              f"{tokens / max(now - t_log, 1e-9):.0f}"])
                log_file.flush()
                tokens, t_log = 0, now
            if step % cfg.ckpt_every == 0:
                checkpoint()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", val="-" if last_val is None else f"{last_val:.4f}")
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        bar.close()
        log_file.close()
    if step % cfg.ckpt_every:  # the loop already saved this step
        checkpoint()
    hours = (elapsed_before + time.time() - t0) / 3600
    ema_model.load_state_dict(ema)
    info = {"step": step, "train_hours_cpu": round(hours, 3), "val_loss": last_val, "train_loss": running,
            "data": cfg.data, "data_hours": round(float(data.work_frames.sum()) / cfg.codec.frame_rate / 3600, 3),
            "train_config": to_dict(cfg)}
    final = save_checkpoint(run / "final", ema_model, cfg.codec, info)
    if cfg.export_dir:
        save_checkpoint(cfg.export_dir, ema_model, cfg.codec, info)
    return TrainResult(step=step, train_loss=running or float("nan"), val_loss=last_val, hours=hours,
                       final_dir=final, history=history)
