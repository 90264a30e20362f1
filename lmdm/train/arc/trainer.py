"""``lmdm arc``: ARC-Forcing post-training (LMDM, arXiv 2605.22717, section 4; DESIGN.md sections 1 and 5).

No reinforcement learning and no reward model: the student is rolled out on its *own* cached streaming
generations for ``N`` blocks (``lmdm.train.arc.rollout``) and trained against a discriminator with the ARC losses
(``lmdm.train.arc.losses``). One iteration:

1. sample real crops ``[context (W*B) | continuation (N*B)]`` and their captions;
2. **generator step**: roll out ``N`` blocks after the real context (gradient only through each block's exit
   step); re-noise ``[context | rollout]`` and ``[context | real continuation]`` with the *same* noise and
   timestep; ``L_G = softplus(D(real) - D(fake))`` on the rollout region; the discriminator is frozen;
3. **discriminator step**: ``L_D = softplus(-(D(real) - D(fake)))`` plus the contrastive loss (real audio with
   its own caption must outscore it with another item's caption, rolled on a copy);
4. EMA of the generator, LR, checkpoints, resume, log and export: the one loop of ``lmdm.train.loop``.

Several processes (``torchrun``, ``lmdm.train.distributed``): each rank takes its rows of the global batch (drawn
from the shared generator) and rolls them out itself; the student's rollout and the discriminator's scoring are each
one ``DistributedDataParallel`` forward (:class:`RolloutPass`, :class:`ScorePass`), so both players' gradients are
averaged over ranks. The rollout noise, timesteps and exit steps come from a per-rank generator seeded from the
shared one, so ranks roll out different futures and the shared generator (the checkpoint's) stays identical on all
ranks; a run resumes on any number of processes. One process uses the shared generator directly, as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmdm.checkpoint import load_checkpoint, save_checkpoint
from lmdm.config import ConfigError, to_dict
from lmdm.device import autocast
from lmdm.diffusion import add_noise
from lmdm.errors import LmdmError
from lmdm.model.dit import DiT
from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.losses import contrastive_loss, relativistic_d_loss, relativistic_g_loss, roll_prompts
from lmdm.train.arc.rollout import rollout
from lmdm.train.dataset import encode_latent_set, load_latent_set
from lmdm.train.distributed import Distributed, batch_plan, distributed_run
from lmdm.train.loop import LoopSettings, LoopState, Task, optimizer_step, run_loop, settle_config, write_config
from lmdm.train.objective import logit_normal

# what ``--resume`` may change: the length, intervals and output folders
CHANGEABLE = {"steps", "max_hours", "log_every", "ckpt_every", "run_dir", "export_dir"}


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
        bf16: mixed precision (the forward passes under autocast with the device's dtype,
            ``lmdm.device.autocast_dtype``): None (default) = on GPUs that compute bf16 natively, off on the CPU
            (ARC ran float32 on the CPU before it had a device: the short CPU post-training keeps its numbers,
            and its rollouts are small); True = wherever the device has a dtype (the CPU too); False = never.
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
    bf16: bool | None = None
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    max_hours: float = 0.0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2: the contrastive loss needs another item's prompt")
        if self.student_steps < 2:
            raise ConfigError("student_steps must be >= 2 (the exit step is drawn from [1, S-1])")
        for name in ("rollout_blocks", "steps", "log_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ARCResult:
    """What an ARC run reports: iterations done, CPU hours, the post-trained checkpoint folder, the
    discriminator's parameter count and the last iteration's losses and scores."""

    step: int
    hours: float
    final_dir: Path
    disc_params: int
    last: dict


def arc_autocast(device: torch.device, bf16: bool | None):
    """The autocast context of an ARC forward pass on ``device`` (see ``ARCConfig.bf16``: None = on off the
    CPU)."""
    return autocast(device, device.type != "cpu" if bf16 is None else bf16)


class RolloutPass(nn.Module):
    """The student's rollout as one module call (so that ``DistributedDataParallel`` sees one forward per
    generator step): ``forward(context, text, has_text, n_blocks, steps, generator) -> (blocks, exit_steps)``
    with ``blocks`` ``(b, N*B, ch)`` and ``exit_steps`` ``(N,)`` long (``lmdm.train.arc.rollout``)."""

    def __init__(self, student: DiT):
        super().__init__()
        self.student = student

    def forward(self, context, text, has_text, n_blocks: int, steps: int, generator: torch.Generator):
        ro = rollout(self.student, context, text, has_text, n_blocks, steps, generator)
        return ro.blocks, torch.tensor(ro.exit_steps)


class ScorePass(nn.Module):
    """The discriminator step's three scorings as one module call (one DDP forward per discriminator step):
    real, fake and real with rolled prompts, each ``(b,)``."""

    def __init__(self, disc: Discriminator):
        super().__init__()
        self.disc = disc

    def forward(self, x_real, x_fake, t, text, has, rolled, rolled_has, region_start: int):
        return (self.disc(x_real, t, text, has, region_start), self.disc(x_fake, t, text, has, region_start),
                self.disc(x_real, t, rolled, rolled_has, region_start))


def arc_iteration(student: DiT, disc: Discriminator, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                  x0: torch.Tensor, text: torch.Tensor, cfg: ARCConfig, gen: torch.Generator,
                  rollout_pass: nn.Module | None = None, score_pass: nn.Module | None = None) -> dict:
    """One generator step and one discriminator step (steps 2 and 3 of the module docstring; ARC, arXiv
    2505.08175, section 3).

    Args:
        student, disc: the two players (updated in place by ``opt_g`` and ``opt_d``).
        x0: ``(b, (W + N) * B, ch)`` real crops: ``W`` context chunks, then ``N = cfg.rollout_blocks`` blocks.
        text: ``(b, text_dim)`` their caption embeddings (``b >= 2``; not modified).
        cfg: losses, rollout length, student steps, gradient clipping, mixed precision (the forward passes run
            under :func:`arc_autocast`, the losses and backward passes in float32).
        gen: the run's RNG (timesteps, noise, exit steps), on the CPU.
        rollout_pass, score_pass: :class:`RolloutPass` of ``student`` and :class:`ScorePass` of ``disc``, or their
            ``DistributedDataParallel`` wrappers (None: built here, one process).

    Returns:
        ``loss_g``, ``loss_d``, ``loss_c``, mean ``d_real`` and ``d_fake`` (floats) and the ``exit_steps`` drawn.
    """
    rollout_pass = rollout_pass or RolloutPass(student)
    score_pass = score_pass or ScorePass(disc)
    dev = next(student.parameters()).device
    x0, text = x0.to(dev), text.to(dev)
    C = student.cfg.context_frames
    ctx = x0[:, :C]
    b = x0.shape[0]
    has = torch.ones(b, dtype=torch.bool, device=dev)
    t = logit_normal((b,), cfg.t_logit_mean, cfg.t_logit_std, gen).to(dev)
    eps = torch.randn(x0.shape, generator=gen, device=gen.device).to(dev)
    x_real = add_noise(x0, eps, t)
    # generator step: the discriminator is frozen, gradients reach the student only through exit steps
    disc.requires_grad_(False)
    student.train()
    with arc_autocast(dev, cfg.bf16):
        blocks, exits = rollout_pass(ctx, text, has, cfg.rollout_blocks, cfg.student_steps, gen)
        x_fake = add_noise(torch.cat([ctx, blocks.float()], 1), eps, t)
        scores = disc(x_real, t, text, has, C), disc(x_fake, t, text, has, C)
    loss_g = relativistic_g_loss(*(s.float() for s in scores))
    optimizer_step(loss_g, opt_g, student.parameters(), cfg.grad_clip)
    # discriminator step: relativistic loss + contrastive loss with prompts rolled on a copy
    disc.requires_grad_(True)
    x_fake = x_fake.detach()
    rolled, rolled_has = roll_prompts(text, has)
    with arc_autocast(dev, cfg.bf16):
        scores = score_pass(x_real, x_fake, t, text, has, rolled, rolled_has, C)
    d_real, d_fake, d_mismatched = (s.float() for s in scores)
    loss_d = relativistic_d_loss(d_real, d_fake)
    loss_c = contrastive_loss(d_real, d_mismatched)
    optimizer_step(loss_d + cfg.contrastive_weight * loss_c, opt_d, disc.parameters(), cfg.grad_clip)
    return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "loss_c": loss_c.item(),
            "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item(), "exit_steps": exits.tolist()}


def arc_train(cfg: ARCConfig | None = None, resume: bool = False, progress: bool = True,
              run_dir: str | Path | None = None, overrides: dict | None = None, device: str = "cpu") -> ARCResult:
    """Run (or resume) ARC-Forcing (see the module docstring) on the loop of ``lmdm.train.loop``.

    Args:
        cfg: the config; with ``resume`` it may be None (the run's saved config is used).
        resume: continue from the run's latest checkpoint; without one, start.
        progress: show a tqdm bar.
        run_dir: overrides ``cfg.run_dir`` (needed when resuming without a config).
        overrides: fields to change after the config is settled; on resume only those in ``CHANGEABLE``.
        device: "cpu" (the default here; ``lmdm arc --device`` defaults to "auto"), "auto", "cuda" or "mps"; with
            several ``torchrun`` processes each rank uses its own (see the module docstring). A resume on another
            device type warns that the numerics change.

    Returns:
        an :class:`ARCResult`; the EMA student is in ``RUN/final`` (and ``export_dir``).

    Raises:
        ARCError: fresh run into a folder with checkpoints, a resume that changes the config, or nothing to
            resume.
        CheckpointError, DataError: missing pretrained checkpoint, or data without crops of
            ``(W + rollout_blocks) * B`` frames.
        ConfigError: an override names an unknown field.
        UsageError: the device is not available, or ``batch_size`` does not give each process 2 or more crops.
    """
    with distributed_run(device) as distributed:
        return _arc_train(cfg, resume, progress, run_dir, overrides, distributed)


def _arc_train(cfg: ARCConfig | None, resume: bool, progress: bool, run_dir: str | Path | None,
               overrides: dict | None, distributed: Distributed) -> ARCResult:
    """:func:`arc_train` in this process's place of the run (``distributed``, inside :func:`distributed_run`); the
    arguments and errors are :func:`arc_train`'s."""
    cfg, run, existing = settle_config(ARCConfig, cfg, resume=resume, run_dir=run_dir, overrides=overrides,
                                       changeable=CHANGEABLE, error=ARCError)
    plan = batch_plan(cfg.batch_size, distributed)
    if plan.per_rank < 2:
        raise ARCError(f"batch_size {cfg.batch_size} gives each of the {distributed.world_size} processes "
                       f"{plan.per_rank} crop(s); the contrastive loss needs 2 or more per process")
    distributed.barrier()  # every rank has read the run folder before rank 0 writes into it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = load_checkpoint(cfg.init_from, device=distributed.device)
    student = base.model
    student.requires_grad_(True)
    torch.manual_seed(cfg.seed)  # the discriminator head's initialisation is part of the run
    if not 1 <= cfg.disc_layers <= student.cfg.n_layers:
        raise ConfigError(f"disc_layers must be 1..{student.cfg.n_layers} (the layers of {cfg.init_from}), "
                          f"got {cfg.disc_layers}")
    disc = Discriminator(student, cfg.disc_layers, cfg.disc_head_width).to(distributed.device)
    opt_g = torch.optim.AdamW(student.parameters(), lr=cfg.lr_g, betas=(0.0, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_d, betas=(0.0, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    with distributed.main_first():  # rank 0 writes the data cache, the others read it
        data = encode_latent_set(load_latent_set(cfg.data, base.codec.cfg, progress=progress and distributed.is_main),
                                 base.codec)
    crop = (student.cfg.window_chunks + cfg.rollout_blocks) * student.cfg.block_frames
    starts = data.valid_starts("train", crop)
    # clean_cond conditions only the cache writes, which run without gradient: unused in the rollout's graph
    rollout_pass = distributed.wrap(RolloutPass(student), find_unused_parameters=True)
    score_pass = distributed.wrap(ScorePass(disc), find_unused_parameters=True)

    def train_step(state: LoopState) -> dict:
        x0, _, text = data.sample(starts, cfg.batch_size, crop, gen, rows=plan.rows)
        rank_gen = gen
        if distributed.active:  # per-rank rollouts; the shared generator advances identically on every rank
            seed = int(torch.randint(2**62, (), generator=gen))
            rank_gen = torch.Generator().manual_seed(seed + distributed.rank)
        out = arc_iteration(student, disc, opt_g, opt_d, x0, text, cfg, rank_gen, rollout_pass, score_pass)
        for k in ("loss_g", "loss_d", "loss_c", "d_real", "d_fake"):
            out[k] = distributed.mean(out[k])
        return out

    def export_info(state: LoopState) -> dict:
        return {"arc_step": state.step, "arc_hours_cpu": round(state.elapsed_s / 3600, 3), "base": cfg.init_from,
                "discriminator_params": disc.num_params(),
                "sampler": {"sampler": "pingpong", "steps": cfg.student_steps, "cfg_scale": 1.0},
                "arc_config": to_dict(cfg), "base_info": {k: base.info.get(k) for k in ("step", "val_loss")}}

    task = Task(modules={"model": student, "disc": disc}, optimizers={"g": opt_g, "d": opt_d}, generator=gen,
                train_step=train_step, save_model=lambda path, m, info: save_checkpoint(path, m, base.codec, info),
                export_info=export_info, ema_decay=lambda n: cfg.ema_decay)
    settings = LoopSettings(run_dir=run, steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                            keep_checkpoints=cfg.keep_checkpoints, max_hours=cfg.max_hours, export_dir=cfg.export_dir,
                            columns=tuple((k, ".5f") for k in ("loss_g", "loss_d", "loss_c", "d_real", "d_fake")),
                            postfix=(("g", "loss_g"), ("d", "loss_d"), ("c", "loss_c")),
                            desc="ARC-Forcing", unit="it", progress=progress, distributed=distributed)
    if distributed.is_main:
        write_config(run, cfg)
    out = run_loop(settings, task, resume_from=existing)
    return ARCResult(step=out.state.step, hours=out.hours, final_dir=out.final_dir, disc_params=disc.num_params(),
                     last=out.state.last)
