"""``lmdm arc``: ARC-Forcing post-training (LMDM, arXiv 2605.22717, section 4; DESIGN.md sections 1 and 5).

No reinforcement learning and no reward model: the student is rolled out on its *own* cached streaming
generations for ``N`` blocks (``lmdm.train.arc.rollout``) and trained against a discriminator with the ARC losses
(``lmdm.train.arc.losses``). One iteration:

1. sample real crops ``[context (W*B) | continuation (N*B)]`` and their captions;
2. **generator step**: roll out ``N`` blocks after the real context (gradient only through each block's exit
   step); re-noise ``[context | rollout]`` and ``[context | real continuation]`` with the *same* noise and
   timestep; ``L_G = softplus(D(real) - D(fake))`` on the rollout region; the discriminator is frozen;
3. **discriminator step**: ``L_D = softplus(-(D(real) - D(fake)))`` plus the contrastive loss (real audio with
   its own caption must outscore it with the next item's caption, rolled on a copy);
4. EMA of the generator; checkpoints and resume as in ``lmdm train``.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdm.checkpoint import load_checkpoint, save_checkpoint
from lmdm.config import from_dict, to_dict
from lmdm.diffusion import add_noise
from lmdm.train.dataset import DataError, load_latent_set
from lmdm.train.objective import logit_normal
from lmdm.train.state import latest_checkpoint, load_training_state, save_training_state
from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.losses import contrastive_loss, relativistic_d_loss, relativistic_g_loss, roll_prompts
from lmdm.train.arc.rollout import rollout
from lmdm.errors import LmdmError


class ARCError(LmdmError, RuntimeError):
    """An ARC run that cannot start or resume as asked."""


@dataclass(frozen=True)
class ARCConfig:
    """ARC-Forcing settings.

    Attributes:
        init_from: the pretrained LMDM checkpoint (student and discriminator trunk start from it).
        data: built data set (real crops and captions).
        run_dir, export_dir: outputs (the final EMA student is written to ``run_dir/final`` and ``export_dir``).
        steps: iterations (one generator and one discriminator step each).
        batch_size: crops per iteration (>= 2, for the contrastive negatives).
        rollout_blocks: ``N`` blocks rolled out per crop.
        student_steps: ``S`` ping-pong steps of the few-step student.
        disc_layers: DiT blocks in the discriminator trunk.
        disc_head_width: channels of its convolutional head.
        lr_g, lr_d: learning rates (AdamW, betas ``(0, 0.99)`` as usual for adversarial training).
        contrastive_weight: weight of the contrastive loss in the discriminator step.
        ema_decay: EMA of the student.
        t_logit_mean, t_logit_std: logit-normal re-noising timestep for the discriminator.
        grad_clip: gradient-norm clipping for both players.
        seed, log_every, ckpt_every, keep_checkpoints, max_hours: as in training.
        threads: torch intra-op threads (0 = default).
    """

    init_from: str = "data/checkpoints/lmdm-small"
    data: str = "data/music"
    run_dir: str = "runs/lmdm-small-arc"
    export_dir: str | None = None
    steps: int = 600
    batch_size: int = 4
    rollout_blocks: int = 4
    student_steps: int = 4
    disc_layers: int = 4
    disc_head_width: int = 128
    lr_g: float = 1e-5
    lr_d: float = 1e-4
    contrastive_weight: float = 1.0
    ema_decay: float = 0.99
    t_logit_mean: float = -0.5
    t_logit_std: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    max_hours: float = 0.0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: the contrastive loss needs another item's prompt")
        if self.student_steps < 2:
            raise ValueError("student_steps must be >= 2 (the exit step is drawn from [1, S-1])")
        if self.rollout_blocks < 1 or self.steps < 1:
            raise ValueError("rollout_blocks and steps must be >= 1")


@dataclass
class ARCResult:
    """What an ARC run reports: iterations done, CPU hours, the post-trained checkpoint folder, the
    discriminator's parameter count and the last iteration's losses and scores."""

    step: int
    hours: float
    final_dir: Path
    disc_params: int
    last: dict


def arc_iteration(student, disc, opt_g, opt_d, x0, text, cfg: ARCConfig, gen: torch.Generator) -> dict:
    """One generator step and one discriminator step on a batch of real crops ``x0`` ``(b, (W+N)*B, ch)``."""
    C = student.cfg.context_frames
    ctx, real = x0[:, :C], x0[:, C:]
    b = x0.shape[0]
    has = torch.ones(b, dtype=torch.bool)
    t = logit_normal((b,), cfg.t_logit_mean, cfg.t_logit_std, gen)
    eps = torch.randn(x0.shape, generator=gen)
    x_real = add_noise(x0, eps, t)
    # generator step: the discriminator is frozen, gradients reach the student only through exit steps
    disc.requires_grad_(False)
    student.train()
    ro = rollout(student, ctx, text, has, cfg.rollout_blocks, cfg.student_steps, gen)
    x_fake = add_noise(torch.cat([ctx, ro.blocks], 1), eps, t)
    loss_g = relativistic_g_loss(disc(x_real, t, text, has, C), disc(x_fake, t, text, has, C))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
    opt_g.step()
    # discriminator step: relativistic loss + contrastive loss with prompts rolled on a copy
    disc.requires_grad_(True)
    x_fake = x_fake.detach()
    d_real = disc(x_real, t, text, has, C)
    d_fake = disc(x_fake, t, text, has, C)
    rolled, rolled_has = roll_prompts(text, has)
    d_mismatched = disc(x_real, t, rolled, rolled_has, C)
    loss_d = relativistic_d_loss(d_real, d_fake)
    loss_c = contrastive_loss(d_real, d_mismatched)
    opt_d.zero_grad(set_to_none=True)
    (loss_d + cfg.contrastive_weight * loss_c).backward()
    torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
    opt_d.step()
    return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "loss_c": loss_c.item(),
            "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item(), "exit_steps": ro.exit_steps}


def arc_train(cfg: ARCConfig | None = None, resume: bool = False, progress: bool = True,
              run_dir: str | Path | None = None, overrides: dict | None = None) -> ARCResult:
    """Run (or resume) ARC-Forcing; see the module docstring.

    Raises:
        ARCError: fresh run into a folder with checkpoints, or nothing to resume.
        CheckpointError, DataError: missing pretrained checkpoint or data.
    """
    from tqdm.auto import tqdm

    run = Path(run_dir or (cfg.run_dir if cfg else ""))
    existing = latest_checkpoint(run) if str(run) else None
    if existing is not None and not resume:
        raise ARCError(f"{run} already holds checkpoints ({existing.name}); pass --resume, or another run_dir")
    changeable = {"steps", "max_hours", "log_every", "ckpt_every", "run_dir", "export_dir"}
    if resume and existing is not None:
        saved = from_dict(ARCConfig, json.loads((run / "config.json").read_text()), where=str(run / "config.json"))
        if cfg is not None:
            a, b = to_dict(saved), to_dict(dataclasses.replace(cfg, run_dir=saved.run_dir))
            differ = sorted(k for k in a if a[k] != b[k] and k not in changeable)
            if differ:
                raise ARCError(f"--resume with a config that differs from the run's in {differ}; only "
                               f"{sorted(changeable)} may change")
            saved = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in changeable if k != "run_dir"})
        cfg = saved
    elif cfg is None:
        raise ARCError(f"nothing to resume in {run} and no config given")
    if overrides:
        bad = sorted(set(overrides) - changeable) if resume and existing is not None else []
        if bad:
            raise ARCError(f"cannot change {bad} when resuming; only {sorted(changeable)}")
        cfg = dataclasses.replace(cfg, **overrides)
    cfg = dataclasses.replace(cfg, run_dir=str(run))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = load_checkpoint(cfg.init_from)
    student = base.model
    student.requires_grad_(True)
    torch.manual_seed(cfg.seed)  # the discriminator head's initialisation is part of the run
    disc = Discriminator(student, cfg.disc_layers, cfg.disc_head_width)
    opt_g = torch.optim.AdamW(student.parameters(), lr=cfg.lr_g, betas=(0.0, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_d, betas=(0.0, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = {k: v.detach().clone().float() for k, v in student.state_dict().items()}
    step, elapsed_before = 0, 0.0
    if resume and existing is not None:
        ema, st = load_training_state(existing, {"model": student, "disc": disc}, {"g": opt_g, "d": opt_d}, gen)
        step, elapsed_before = st["step"], st.get("elapsed_s", 0.0)
    data = load_latent_set(cfg.data, base.codec, progress=progress)
    crop = (student.cfg.window_chunks + cfg.rollout_blocks) * student.cfg.block_frames
    try:
        starts = data.valid_starts("train", crop)
    except DataError as e:
        raise ARCError(str(e)) from e
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    log_path = run / "log.csv"
    new_log = not log_path.exists()
    log_file = open(log_path, "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "loss_g", "loss_d", "loss_c", "d_real", "d_fake", "elapsed_s"])
    t0 = time.time()
    last: dict = {}

    def checkpoint():
        save_training_state(run, step, {"model": student, "disc": disc}, ema, {"g": opt_g, "d": opt_d}, gen,
                            {"elapsed_s": elapsed_before + time.time() - t0, "last": last},
                            keep=cfg.keep_checkpoints)

    bar = tqdm(total=cfg.steps, initial=step, desc="ARC-Forcing", unit="it", disable=not progress)
    try:
        while step < cfg.steps:
            if cfg.max_hours and (elapsed_before + time.time() - t0) / 3600 >= cfg.max_hours:
                break
            x0, _, text = data.sample(starts, cfg.batch_size, crop, gen)
            last = arc_iteration(student, disc, opt_g, opt_d, x0, text, cfg, gen)
            step += 1
            with torch.no_grad():
                for k, v in student.state_dict().items():
                    ema[k].mul_(cfg.ema_decay).add_(v.float(), alpha=1 - cfg.ema_decay)
            if step % cfg.log_every == 0:
                log.writerow([step] + [f"{last[k]:.5f}" for k in ("loss_g", "loss_d", "loss_c", "d_real", "d_fake")]
                             + [f"{elapsed_before + time.time() - t0:.1f}"])
                log_file.flush()
            if step % cfg.ckpt_every == 0:
                checkpoint()
            bar.update(1)
            bar.set_postfix(g=f"{last['loss_g']:.3f}", d=f"{last['loss_d']:.3f}", c=f"{last['loss_c']:.3f}")
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        bar.close()
        log_file.close()
    if step % cfg.ckpt_every:  # the loop already saved this step
        checkpoint()
    hours = (elapsed_before + time.time() - t0) / 3600
    student.load_state_dict(ema)
    info = {"arc_step": step, "arc_hours_cpu": round(hours, 3), "base": cfg.init_from,
            "discriminator_params": disc.num_params(), "sampler": {"sampler": "pingpong", "steps": cfg.student_steps,
                                                                   "cfg_scale": 1.0},
            "arc_config": to_dict(cfg), "base_info": {k: base.info.get(k) for k in ("step", "val_loss")}}
    final = save_checkpoint(run / "final", student, base.codec, info)
    if cfg.export_dir:
        save_checkpoint(cfg.export_dir, student, base.codec, info)
    return ARCResult(step=step, hours=hours, final_dir=final, disc_params=disc.num_params(), last=last)
