"""``lmdm arc``: ARC-Forcing post-training (LMDM, arXiv 2605.22717, section 4; DESIGN.md sections 1 and 5).

No reinforcement learning and no reward model: the student is rolled out on its *own* cached streaming
generations for ``N`` blocks (``lmdm.train.arc.rollout``) and trained against a discriminator with the ARC losses
(``lmdm.train.arc.losses``). One iteration:

1. sample real crops ``[context (W*B) | continuation (N*B)]``, their captions and control features, and for each
   crop a negative caption (another work's, with another text: ``lmdm.train.arc.negatives``);
2. draw the rollout's conditions as pretraining does (:func:`draw_iteration`): prompt dropout (some rollouts run
   unconditioned) and control dropout over the crop's real control features (the sketch and jam pathways), an
   exit step per block from all ``S`` steps, the discriminator's timestep and noise;
3. **generator step** (:func:`generator_step`): roll out ``N`` blocks after the real context (gradient only
   through each block's exit step); re-noise ``[context | rollout]`` and ``[context | real continuation]`` with the
   *same* noise and timestep; ``L_G = softplus(D(real) - D(fake))`` on the rollout region, plus the level anchor
   (``lmdm.train.arc.level``: the rollouts' decoded mel matches the real continuations' per-band statistics, and
   no band is louder than the training data's loudest); the discriminator is frozen;
4. **discriminator step** (:func:`discriminator_step`): ``L_D = softplus(-(D(real) - D(fake)))`` plus the
   contrastive loss (real audio with its own caption must outscore it with the negative caption); the student
   is not touched;
5. EMA of the generator, LR, checkpoints, resume, log and export: the one loop of ``lmdm.train.loop``.

With ``own_stream_every = k``, every ``k``-th iteration instead continues the student's own long streams
(:func:`own_stream_iteration`, ``lmdm.train.arc.streams``): the runaway of long streams is met in training. With
``own_stream_adv_weight`` the discriminator scores those streams too, as in steps 3 and 4 (Self-Forcing++, Cui et
al. 2025, arXiv 2510.02283: the short-window critic corrects windows of the student's own long rollouts).

The discriminator scores each sequence with the prompt flag and the control channels the rollout had.

Several processes (``torchrun``, ``lmdm.train.distributed``): each rank takes its rows of the global batch (drawn
from the shared generator, negatives included) and rolls them out itself; the student's rollout and the
discriminator's scoring are each one ``DistributedDataParallel`` forward (:class:`RolloutPass`,
:class:`ScorePass`), so both players' gradients are averaged over ranks. The dropouts, rollout noise, timesteps and
exit steps come from a per-rank generator seeded from the shared one, so ranks roll out different futures and the
shared generator (the checkpoint's) stays identical on all ranks; a run resumes on any number of processes. One
process uses the shared generator directly.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmdm.checkpoint import load_checkpoint, save_checkpoint
from lmdm.config import ConfigError, to_dict
from lmdm.control.features import control_input
from lmdm.device import autocast
from lmdm.diffusion import add_noise
from lmdm.errors import LmdmError
from lmdm.model.dit import DiT
from lmdm.streaming.level_guard import ceilings_of, guard_statistics, split_works
from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.drone import band_level, loop_gain_loss, with_drone
from lmdm.train.arc.level import (TERMS, DecodedMel, LevelCeilings, decoded_summaries, frame_crest,
                                  level_anchor_loss, momentary_level, with_gain)
from lmdm.train.arc.losses import contrastive_loss, relativistic_d_loss, relativistic_g_loss
from lmdm.train.arc.negatives import Negatives
from lmdm.train.arc.rollout import draw_exit_steps, rollout
from lmdm.train.arc.streams import OwnStreams, same_work_starts
from lmdm.train.config import TrainConfig
from lmdm.train.dataset import LatentSet, encode_latent_set, load_latent_set
from lmdm.train.distributed import Distributed, batch_plan, distributed_run
from lmdm.train.loop import LoopSettings, LoopState, Task, optimizer_step, run_loop, settle_config, write_config
from lmdm.train.objective import control_presence, logit_normal

# what ``--resume`` may change: the length, intervals and output folders
CHANGEABLE = {"steps", "max_hours", "log_every", "ckpt_every", "run_dir", "export_dir"}
# the rollout's dropouts, as pretraining names them (``TrainConfig``)
DROPOUTS = ("prompt_dropout", "control_dropout", "control_group_dropout")


class ARCError(LmdmError, RuntimeError):
    """An ARC run that cannot start or resume as asked."""


@dataclass(frozen=True)
class ARCConfig:
    """ARC-Forcing settings.

    Attributes:
        init_from: the pretrained LMDM checkpoint (student and discriminator trunk start from it).
        data: built data set (real crops, captions and control features).
        run_dir, export_dir: outputs (the final EMA student is written to ``run_dir/final`` and ``export_dir``).
        steps: iterations (one generator and one discriminator step each).
        batch_size: crops per iteration (the contrastive negatives come from the data set, not the batch).
        rollout_blocks: ``N`` blocks rolled out per crop.
        student_steps: ``S`` ping-pong steps of the few-step student (>= 1); each block's exit step is drawn
            from ``1..S``.
        prompt_dropout, control_dropout, control_group_dropout: the rollouts' dropouts, as in pretraining
            (``TrainConfig``): a rollout runs without its prompt with probability ``prompt_dropout``, and with
            the crop's control groups dropped as pretraining drops them. None (default) = the values the base
            checkpoint was pretrained with (its ``info.train_config``; ``TrainConfig``'s defaults for a
            checkpoint that records none).
        disc_layers: DiT blocks in the discriminator trunk.
        disc_head_width: channels of its convolutional head.
        lr_g, lr_d: learning rates (AdamW, betas ``(0, 0.99)`` as usual for adversarial training).
        contrastive_weight: weight of the contrastive loss in the discriminator step.
        level_weight: weight of the level anchor in the generator step (``lmdm.train.arc.level``: per-band mean
            and spread of the rollouts' decoded mel against the real continuations'; a uniform offset of ``g``
            dB costs ``(g / 21.7)^2``, so at 1.0 a 14 dB offset weighs about as much as the adversarial loss at
            equilibrium, ``ln 2``); 0 = off.
        ceiling_weight: weight of the ceiling in the generator step (``lmdm.train.arc.level.ceiling_loss``: the
            squared excess of the rollouts' decoded mel over the loudest value of each band in the training
            split, summed over bands); 0 = off.
        momentary_weight: weight of the momentary ceiling in the generator step
            (``lmdm.train.arc.level.momentary_ceiling_loss``: the squared excess of each 0.4 s window's total
            level over the training split's ``momentary_quantile``, the passages where long streams clip); 0 = off.
        momentary_quantile: the momentary ceiling's level, as a quantile of the training split's 0.4 s windows
            (0.999: what real music exceeds one window in a thousand; 1: its loudest window).
        crest_weight: weight of the crest ceiling in the generator step (``lmdm.train.arc.level.crest_ceiling_loss``:
            the squared excess of each 16 ms frame's power above its 0.4 s surroundings over the training split's
            ``crest_quantile``: the peaks that clip at the data's loudness); 0 = off.
        crest_quantile: the crest ceiling, as a quantile of the training split's frame crests.
        frame_weight: weight of the frame ceiling in the generator step (``lmdm.train.arc.level.frame_ceiling_loss``:
            the squared excess of each 16 ms frame's total level over the training split's ``frame_quantile``,
            the frames where the decoded waveform clips); 0 = off.
        frame_quantile: the frame ceiling, as a quantile of the training split's frame levels (0.999: the level
            guard's, ``lmdm.streaming.level_guard.FRAME_QUANTILE``).
        peak_weight: weight of the peak ceiling in the generator step (``lmdm.train.arc.level.peak_ceiling_loss``:
            the squared excess, in the codec's log units, of the rollouts' decoded waveform peaks, each hop's, over
            ``peak_dbfs``: the clipped samples themselves, which no mel statistic sees); 0 = off.
        peak_dbfs: the peak ceiling, dB relative to full scale, in [-24, 0] (-1: EBU R 128's maximum true peak,
            -1 dBTP, above the peaks of the training music through the codec).
        own_stream_every: every ``k``-th iteration is an own-stream iteration (:func:`own_stream_iteration`:
            the student continues its own long streams, trained on the level anchor and the ceilings only); 0 =
            off (every iteration starts from real music). One process only.
        own_stream_blocks: mean length in blocks of an own stream before it restarts from real music.
        own_stream_per_item: the own-stream iterations' level anchor compares each stream with the real crop of
            its own work (``level_anchor_loss(per_item=True)``) instead of the batch's pooled statistics.
        own_stream_steps: denoising steps of the own streams' rollouts (0 = ``student_steps``); fewer steps
            train the student against the faster sampler's runaway, which builds sooner.
        own_stream_alt_steps: 0 = off; ``n`` > 0: the second half of the own streams (rows ``batch_size // 2``
            on) sample with ``n`` steps, the first half with ``own_stream_steps``: one run meets the runaway of
            both samplers (each at its own pace), since training on either alone fixes that sampler only.
        own_stream_kick_db: 0 = off; ``k`` > 0: level kicks. Before an own-stream iteration's rollout, each
            stream's context is, with probability ``own_stream_kick_p``, played louder or quieter by a gain drawn
            uniformly from ``[-k, k]`` dB (``lmdm.train.arc.level.with_gain``), and the stream goes on from there:
            the loud and quiet states that long streams drift into after minutes (a choir chorale that bursts,
            a harp tune that fades) are met every few iterations, and the level anchor and ceilings train the
            way back.
        own_stream_kick_p: probability per stream and own-stream iteration of a level kick.
        own_stream_kick_hz: 0 = a kick is a gain on every band; ``f`` > 0 = bass kicks, a gain on the bands
            centred below ``f`` Hz only (``with_gain(below_hz=f)``): the measured runaways are one low note
            taking 98-100% of the power below 150 Hz (README, "What a runaway is"), a state a uniform gain does
            not put a stream in.
        own_stream_adv_weight: 0 = off; ``w`` > 0: own streams also play the adversarial game. Each own stream
            that went on from its context (not a cold restart) is re-noised as ``[context | rollout]`` beside a real
            crop of its work with the same caption, timestep and noise; the student's update adds ``w`` times the
            relativistic generator loss (the discriminator frozen), then the discriminator takes a relativistic
            step on the same pair (the student untouched). The discriminator otherwise only sees 4-block rollouts
            after real context, never the bass drone a stream drifts into after minutes (README, "What a runaway
            is"); Self-Forcing++ (Cui et al. 2025, arXiv 2510.02283, section 3) trains on windows of the
            student's own long rollouts for the same reason.
        own_stream_cold_p: probability that a restarting own stream starts cold, from no context at all, as
            ``lmdm generate`` and a live session start (``BlockCausalKVCache.bootstrap(None)``), instead of from
            a real crop's context: the first seconds of a stream, where the choir chorale's loudness runaway
            begins, are met in training. A cold stream is not kicked. Needs ``rollout_blocks`` >= the model's
            ``window_chunks`` (the rollout then fills the whole context). 0 = off.
        own_stream_drone_p: 0 = off; ``p`` > 0: drone contexts. Before an own-stream iteration's rollout, each warm
            stream's context gets, with probability ``p``, a sustained low note mixed in (``lmdm.train.arc.drone.
            with_drone``: fundamental uniform in ``[40, loop_gain_hz)`` Hz with two harmonics, its level uniform
            in ``[-own_stream_drone_db, 0]`` dB re. the context's total level), the state every traced runaway
            grows from (README, "The runaway's loop gain"); the stream goes on from there. Drawn after the cold
            starts.
        own_stream_drone_db: how far below the context's total level the quietest drone is, dB.
        own_stream_drone_rise_db: 0 = steady drones; ``r`` > 0: each drone grows through the context by a rate
            drawn uniform in ``[0, r]`` dB a block, reaching its level at the context's end (a runaway's onset is
            a crescendo the student goes on with: the loop-gain drones' own next blocks are +5 dB a block louder).
        loop_gain_weight: weight of the loop-gain term on the drone streams (``lmdm.train.arc.drone.loop_gain_loss``:
            the squared excess of the written bass level over the droned context's last block's, beyond
            ``loop_gain_margin_db``);
            0 = off. Needs ``own_stream_drone_p`` > 0.
        loop_gain_quantile: None = the loop-gain term acts on the drone streams only; ``q`` in [0, 1]: also on every
            warm own stream whose context's last block has a bass level (``lmdm.train.arc.drone.band_level``) above
            the training split's ``q`` quantile of one-block bass levels: a stream already at a loud bass may not
            make it louder, whether the drone was put there or the student drifted into it. (Real music's bass
            rises a lot where it was quiet: over the next 4 blocks its 90th percentile is +9.7 dB above the last
            block's, so a hinge on every stream would fight the data.)
        loop_gain_hz: the bass limit of the drones and the term, Hz.
        loop_gain_margin_db: the loop gain the term allows, dB over the rollout (0: a drone may not grow).
        context_noise: noise augmentation of the context (GameNGen, Valevski et al., ICLR 2025, arXiv 2408.14837,
            section 3.2): in every rollout, adversarial and own-stream alike, what the student reads from its KV
            cache (the context, then each finished block) carries Gaussian noise of a standard deviation drawn per
            stream uniform in ``[0, context_noise]`` (latents have unit variance), while the discriminator, the
            level anchor and the ceilings see the clean sequence (``lmdm.train.arc.rollout.rollout``). Inference
            caches clean blocks (``sigma = 0``, inside the trained range). 0 = off (nothing is drawn).
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
    prompt_dropout: float | None = None
    control_dropout: float | None = None
    control_group_dropout: float | None = None
    disc_layers: int = 4
    disc_head_width: int = 128
    lr_g: float = 1e-5
    lr_d: float = 1e-4
    contrastive_weight: float = 1.0
    level_weight: float = 1.0
    ceiling_weight: float = 0.0
    momentary_weight: float = 0.0
    momentary_quantile: float = 0.999
    crest_weight: float = 0.0
    crest_quantile: float = 0.999
    frame_weight: float = 0.0
    frame_quantile: float = 0.999
    peak_weight: float = 0.0
    peak_dbfs: float = -1.0
    own_stream_every: int = 0
    own_stream_blocks: int = 120
    own_stream_per_item: bool = False
    own_stream_steps: int = 0
    own_stream_alt_steps: int = 0
    own_stream_kick_db: float = 0.0
    own_stream_kick_p: float = 0.25
    own_stream_kick_hz: float = 0.0
    own_stream_adv_weight: float = 0.0
    own_stream_cold_p: float = 0.0
    own_stream_drone_p: float = 0.0
    own_stream_drone_db: float = 12.0
    own_stream_drone_rise_db: float = 0.0
    loop_gain_weight: float = 0.0
    loop_gain_quantile: float | None = None
    loop_gain_hz: float = 150.0
    loop_gain_margin_db: float = 0.0
    context_noise: float = 0.0
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
        for name in ("batch_size", "student_steps", "rollout_blocks", "steps", "log_every", "ckpt_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in DROPOUTS:
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{name} must be in [0, 1] (or null: as pretrained), got {value}")
        for name in ("level_weight", "contrastive_weight", "ceiling_weight", "momentary_weight", "crest_weight",
                     "frame_weight", "peak_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("momentary_quantile", "crest_quantile", "frame_quantile"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not -24 <= self.peak_dbfs <= 0:
            raise ConfigError(f"peak_dbfs must be in [-24, 0] dB of full scale, got {self.peak_dbfs}")
        if self.own_stream_every < 0 or self.own_stream_blocks < self.rollout_blocks:
            raise ConfigError(f"own_stream_every must be >= 0 and own_stream_blocks >= rollout_blocks "
                              f"({self.rollout_blocks}), got {self.own_stream_every} and {self.own_stream_blocks}")
        if not 0 <= self.own_stream_steps <= self.student_steps:
            raise ConfigError(f"own_stream_steps must be in 0..student_steps ({self.student_steps}), got "
                              f"{self.own_stream_steps}")
        if not 0 <= self.own_stream_alt_steps <= self.student_steps or (self.own_stream_alt_steps
                                                                         and self.batch_size < 2):
            raise ConfigError(f"own_stream_alt_steps must be in 0..student_steps ({self.student_steps}) and needs "
                              f"batch_size >= 2, got {self.own_stream_alt_steps} with batch_size {self.batch_size}")
        if not self.own_stream_kick_db >= 0 or not 0 <= self.own_stream_kick_p <= 1:
            raise ConfigError(f"own_stream_kick_db must be >= 0 and own_stream_kick_p in [0, 1], got "
                              f"{self.own_stream_kick_db} and {self.own_stream_kick_p}")
        if not self.own_stream_adv_weight >= 0:
            raise ConfigError(f"own_stream_adv_weight must be >= 0 (0 = off), got {self.own_stream_adv_weight}")
        if not self.own_stream_kick_hz >= 0:
            raise ConfigError(f"own_stream_kick_hz must be >= 0 (0 = kick every band), got {self.own_stream_kick_hz}")
        if not 0 <= self.own_stream_cold_p <= 1:
            raise ConfigError(f"own_stream_cold_p must be in [0, 1], got {self.own_stream_cold_p}")
        if not 0 <= self.own_stream_drone_p <= 1 or not self.own_stream_drone_db >= 0 or \
                not self.own_stream_drone_rise_db >= 0:
            raise ConfigError(f"own_stream_drone_p must be in [0, 1], own_stream_drone_db and own_stream_drone_rise_db "
                              f">= 0, got {self.own_stream_drone_p}, {self.own_stream_drone_db} and "
                              f"{self.own_stream_drone_rise_db}")
        if not self.loop_gain_weight >= 0 or not self.loop_gain_hz > 40:
            raise ConfigError(f"loop_gain_weight must be >= 0 and loop_gain_hz > 40 (the lowest drone), got "
                              f"{self.loop_gain_weight} and {self.loop_gain_hz}")
        if self.loop_gain_quantile is not None and not 0 <= self.loop_gain_quantile <= 1:
            raise ConfigError(f"loop_gain_quantile must be in [0, 1] (or null: drone streams only), got "
                              f"{self.loop_gain_quantile}")
        if self.loop_gain_weight and not (self.own_stream_every and (self.own_stream_drone_p
                                                                     or self.loop_gain_quantile is not None)):
            raise ConfigError("loop_gain_weight acts on own streams with a drone or a loud bass: set "
                              "own_stream_every > 0 and own_stream_drone_p > 0 or loop_gain_quantile, or "
                              "loop_gain_weight = 0")
        if not self.context_noise >= 0:
            raise ConfigError(f"context_noise must be >= 0 (a standard deviation in latent units; 0 = off), got "
                              f"{self.context_noise}")
        if self.own_stream_every and self.level_weight == 0 and self.ceiling_weight == 0 and \
                self.momentary_weight == 0 and self.crest_weight == 0 and self.frame_weight == 0 and \
                self.peak_weight == 0:
            raise ConfigError("own-stream iterations train on the level anchor and the ceilings only: set "
                              "level_weight, ceiling_weight, momentary_weight, crest_weight, frame_weight or "
                              "peak_weight > 0, or own_stream_every = 0")


def with_pretraining_dropouts(cfg: ARCConfig, base_info: dict) -> ARCConfig:
    """``cfg`` with every dropout left None set to the base checkpoint's pretraining value (``base_info`` is the
    checkpoint's ``info``; its ``train_config`` is what ``lmdm train`` exports), or to ``TrainConfig``'s default
    where the checkpoint records none."""
    pretrained = base_info.get("train_config") or {}
    default = {f.name: f.default for f in fields(TrainConfig) if f.name in DROPOUTS}
    return replace(cfg, **{k: float(pretrained.get(k, default[k])) for k in DROPOUTS if getattr(cfg, k) is None})


@dataclass
class ARCResult:
    """What an ARC run reports: iterations done, CPU hours, the post-trained checkpoint folder, the
    discriminator's parameter count and the last iteration's losses and scores."""

    step: int
    hours: float
    final_dir: Path
    disc_params: int
    last: dict


@dataclass
class ARCBatch:
    """Real crops and what goes with them (on one device).

    Attributes:
        x0: ``(b, (W + N) * B, ch)`` latent crops: ``W`` context chunks, then ``N`` blocks.
        text: ``(b, text_dim)`` caption embeddings (not modified).
        negative: ``(b, text_dim)`` embeddings of captions that do not describe the crops (``Negatives``).
        features: ``(b, (W + N) * B, 4)`` control features of the crops (``lmdm.control.features``), or None (no
            controls: every rollout runs without).
    """

    x0: torch.Tensor
    text: torch.Tensor
    negative: torch.Tensor
    features: torch.Tensor | None = None

    def to(self, device: torch.device) -> ARCBatch:
        """The batch on ``device``."""
        return ARCBatch(self.x0.to(device), self.text.to(device), self.negative.to(device),
                        None if self.features is None else self.features.to(device))


@dataclass(frozen=True)
class ARCDraw:
    """The random choices of one iteration besides the rollout's noise (:func:`draw_iteration`).

    Attributes:
        has_text: ``(b,)`` bool, False = the rollout runs without its prompt (prompt dropout).
        controls: ``(b, (W + N) * B, control_dim)`` control channels after control dropout, or None.
        exit_steps: the exit step of each rolled-out block, in ``1..S``.
        t: ``(b,)`` the discriminator's re-noising timesteps.
        eps: ``(b, (W + N) * B, ch)`` its noise, shared by the real and the generated sequence.
    """

    has_text: torch.Tensor
    controls: torch.Tensor | None
    exit_steps: list[int]
    t: torch.Tensor
    eps: torch.Tensor


def draw_iteration(batch: ARCBatch, cfg: ARCConfig, gen: torch.Generator) -> ARCDraw:
    """Draw, on ``gen`` (its device) and in this order: prompt dropout, control dropout (as pretraining,
    ``lmdm.train.objective.control_presence``), the exit steps, the timesteps and the noise; returned on the
    batch's device.

    Raises:
        ConfigError: a dropout of ``cfg`` is still None (see :func:`with_pretraining_dropouts`).
    """
    if any(getattr(cfg, k) is None for k in DROPOUTS):
        raise ConfigError(f"set the rollout dropouts {DROPOUTS} first (with_pretraining_dropouts)")
    b, dev = batch.x0.shape[0], batch.x0.device
    has_text = torch.rand(b, generator=gen, device=gen.device) >= cfg.prompt_dropout
    kept = control_presence(b, cfg, gen)
    controls = None if batch.features is None else control_input(batch.features, kept.to(dev))
    exits = draw_exit_steps(cfg.rollout_blocks, cfg.student_steps, gen)
    t = logit_normal((b,), cfg.t_logit_mean, cfg.t_logit_std, gen)
    eps = torch.randn(batch.x0.shape, generator=gen, device=gen.device)
    return ARCDraw(has_text.to(dev), controls, exits, t.to(dev), eps.to(dev))


def arc_autocast(device: torch.device, bf16: bool | None):
    """The autocast context of an ARC forward pass on ``device`` (see ``ARCConfig.bf16``: None = on off the
    CPU)."""
    return autocast(device, device.type != "cpu" if bf16 is None else bf16)


class RolloutPass(nn.Module):
    """The student's rollout as one module call (so that ``DistributedDataParallel`` sees one forward per
    generator step): ``forward(context, text, has_text, controls, exit_steps, steps, generator) -> blocks``
    ``(b, N*B, ch)`` (``lmdm.train.arc.rollout``)."""

    def __init__(self, student: DiT):
        super().__init__()
        self.student = student

    def forward(self, context, text, has_text, controls, exit_steps: list[int], steps: int,
                generator: torch.Generator, context_noise: float = 0.0):
        return rollout(self.student, context, text, has_text, exit_steps, steps, generator, controls,
                       context_noise).blocks


class ScorePass(nn.Module):
    """The discriminator step's three scorings as one module call (one DDP forward per discriminator step):
    real, fake (both with the rollout's prompt flags) and real with the negative captions, each ``(b,)``."""

    def __init__(self, disc: Discriminator):
        super().__init__()
        self.disc = disc

    def forward(self, x_real, x_fake, t, text, has, negative, region_start: int, controls=None):
        with_prompt = torch.ones_like(has)
        return (self.disc(x_real, t, text, has, region_start, controls),
                self.disc(x_fake, t, text, has, region_start, controls),
                self.disc(x_real, t, negative, with_prompt, region_start, controls))


@contextmanager
def frozen(module: nn.Module):
    """Inside, ``module``'s parameters take no gradient (the other player's update cannot change them); their
    ``requires_grad`` flags are restored on the way out, also after an error."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def generator_step(student: DiT, disc: Discriminator, opt_g: torch.optim.Optimizer, batch: ARCBatch,
                   draw: ARCDraw, cfg: ARCConfig, gen: torch.Generator, mel: DecodedMel,
                   rollout_pass: nn.Module | None = None,
                   ceiling: LevelCeilings | None = None) -> tuple[torch.Tensor, dict]:
    """Step 3 of the module docstring: roll out, score against the real continuation with the discriminator
    frozen, and update the student only (``opt_g``).

    Args:
        student, disc, opt_g: the student, the discriminator (not changed: its parameters get no gradient, and
            their ``requires_grad`` is restored afterwards) and the student's optimiser.
        batch, draw: the iteration's crops and draws (on the student's device).
        cfg: rollout length, student steps, level weight, gradient clipping, mixed precision.
        gen: the rollout's noise.
        mel: the differentiable decoder of the level anchor (:class:`DecodedMel`, on the student's device).
        rollout_pass: :class:`RolloutPass` of ``student`` or its DDP wrapper (None: built here).
        ceiling: the training data's ceilings (:class:`LevelCeilings`: the loudest decoded mel per band, the
            ``momentary_quantile`` of its 0.4 s levels, the ``crest_quantile`` of its frame crests, the
            ``frame_quantile`` of its frame levels, ``peak_dbfs`` on the decoded waveform), or None (no ceiling
            terms).

    Returns:
        ``(x_fake, metrics)``: the re-noised ``[context | rollout]`` ``(b, (W + N) * B, ch)`` (detached, for the
        discriminator step) and ``loss_g``, ``loss_level``, ``loss_ceiling``, ``loss_momentary``, ``loss_crest``,
        ``loss_frame``, ``loss_peak`` (floats; 0 for a ceiling that is off).
    """
    rollout_pass = rollout_pass or RolloutPass(student)
    dev = batch.x0.device
    C = student.cfg.context_frames
    ctx = batch.x0[:, :C]
    ctrl = None if draw.controls is None else draw.controls[:, C:]
    x_real = add_noise(batch.x0, draw.eps, draw.t)
    student.train()
    with frozen(disc):
        with arc_autocast(dev, cfg.bf16):
            blocks = rollout_pass(ctx, batch.text, draw.has_text, ctrl, draw.exit_steps, cfg.student_steps, gen,
                                  cfg.context_noise)
            x_fake = add_noise(torch.cat([ctx, blocks.float()], 1), draw.eps, draw.t)
            scores = (disc(x_real, draw.t, batch.text, draw.has_text, C, draw.controls),
                      disc(x_fake, draw.t, batch.text, draw.has_text, C, draw.controls))
        loss_g = relativistic_g_loss(*(s.float() for s in scores))
        start = C * mel.patch  # the rollout region's first mel frame (decoded with the context before it)
        ceiling = ceiling or LevelCeilings()
        with torch.set_grad_enabled(cfg.level_weight > 0 or any(ceiling_weights(cfg, ceiling))):
            fake_mel = mel(torch.cat([ctx, blocks.float()], 1))[:, start:]
        with torch.no_grad():
            real_mel = mel(batch.x0)[:, start:]
        loss_level = level_anchor_loss(fake_mel, real_mel)
        terms = ceiling.losses(fake_mel, mel)
        total = loss_g + cfg.level_weight * loss_level if cfg.level_weight > 0 else loss_g
        optimizer_step(with_ceilings(total, cfg, ceiling, terms), opt_g, student.parameters(), cfg.grad_clip)
    return x_fake.detach(), {"loss_g": loss_g.item(), "loss_level": loss_level.item(),
                             **{f"loss_{k}": v.item() for k, v in zip(TERMS, terms)}}


def ceiling_weights(cfg: "ARCConfig", ceiling: LevelCeilings) -> tuple[float, ...]:
    """The weights of the band, momentary, crest, frame and peak ceilings as ``LevelCeilings.losses`` orders them:
    the config's, or 0 for a ceiling that ``ceiling`` does not set."""
    return tuple(w if limit is not None else 0.0 for w, limit in ((cfg.ceiling_weight, ceiling.band),
                                                                  (cfg.momentary_weight, ceiling.momentary),
                                                                  (cfg.crest_weight, ceiling.crest),
                                                                  (cfg.frame_weight, ceiling.frame),
                                                                  (cfg.peak_weight, ceiling.peak)))


def with_ceilings(total: torch.Tensor, cfg: "ARCConfig", ceiling: LevelCeilings,
                  terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``total`` plus each ceiling loss of ``terms`` (``LevelCeilings.losses``) times its :func:`ceiling_weights`,
    added one after another, those that are off left out (the generator step's and the own-stream iteration's
    objective)."""
    for weight, loss in zip(ceiling_weights(cfg, ceiling), terms):
        if weight > 0:
            total = total + weight * loss
    return total


def discriminator_step(disc: Discriminator, opt_d: torch.optim.Optimizer, batch: ARCBatch, draw: ARCDraw,
                       x_fake: torch.Tensor, cfg: ARCConfig, region_start: int,
                       score_pass: nn.Module | None = None) -> dict:
    """Step 4 of the module docstring: the relativistic loss on real vs generated (with the rollout's prompt flags
    and controls) plus the contrastive loss (real with its own caption vs with the negative caption, over the
    items that had their prompt), updating the discriminator only (``opt_d``; ``x_fake`` is detached, so no
    gradient reaches the student).

    Args:
        region_start: first scored frame (``W * B``).
        score_pass: :class:`ScorePass` of ``disc`` or its DDP wrapper (None: built here).
        the others: as in :func:`generator_step`.

    Returns:
        ``loss_d``, ``loss_c``, mean ``d_real`` and ``d_fake`` (floats).
    """
    score_pass = score_pass or ScorePass(disc)
    x_real = add_noise(batch.x0, draw.eps, draw.t)
    with arc_autocast(batch.x0.device, cfg.bf16):
        scores = score_pass(x_real, x_fake.detach(), draw.t, batch.text, draw.has_text, batch.negative,
                            region_start, draw.controls)
    d_real, d_fake, d_negative = (s.float() for s in scores)
    loss_d = relativistic_d_loss(d_real, d_fake)
    loss_c = contrastive_loss(d_real, d_negative, keep=draw.has_text)
    optimizer_step(loss_d + cfg.contrastive_weight * loss_c, opt_d, disc.parameters(), cfg.grad_clip)
    return {"loss_d": loss_d.item(), "loss_c": loss_c.item(), "d_real": d_real.mean().item(),
            "d_fake": d_fake.mean().item()}


def arc_iteration(student: DiT, disc: Discriminator, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                  batch: ARCBatch, cfg: ARCConfig, gen: torch.Generator, mel: DecodedMel,
                  rollout_pass: nn.Module | None = None, score_pass: nn.Module | None = None,
                  ceiling: LevelCeilings | None = None) -> dict:
    """One generator step and one discriminator step (steps 2-4 of the module docstring; ARC, arXiv 2505.08175,
    section 3).

    Args:
        student, disc: the two players (updated in place by ``opt_g`` and ``opt_d``).
        batch: the crops, captions, negative captions and control features (moved to the student's device).
        cfg: losses, dropouts (set: :func:`with_pretraining_dropouts`), rollout length, student steps, gradient
            clipping, mixed precision (the forward passes run under :func:`arc_autocast`, the losses and backward
            passes in float32).
        gen: the run's RNG (dropouts, exit steps, timesteps, noise), on the CPU.
        mel: the level anchor's decoder (:class:`DecodedMel` of the checkpoint's codec, on the student's device).
        rollout_pass, score_pass: :class:`RolloutPass` of ``student`` and :class:`ScorePass` of ``disc``, or their
            ``DistributedDataParallel`` wrappers (None: built here, one process).
        ceiling: the ceilings of :func:`generator_step` (None: no ceiling terms).

    Returns:
        ``loss_g``, ``loss_level``, ``loss_ceiling``, ``loss_momentary``, ``loss_crest``, ``loss_frame``, ``loss_peak``,
        ``loss_d``, ``loss_c``, mean
        ``d_real`` and ``d_fake`` (floats), the ``exit_steps`` drawn and ``prompted``, the fraction of rollouts that
        had their prompt.

    Raises:
        ConfigError: a dropout of ``cfg`` is None.
    """
    batch = batch.to(next(student.parameters()).device)
    draw = draw_iteration(batch, cfg, gen)
    x_fake, out = generator_step(student, disc, opt_g, batch, draw, cfg, gen, mel, rollout_pass, ceiling)
    out.update(discriminator_step(disc, opt_d, batch, draw, x_fake, cfg, student.cfg.context_frames, score_pass))
    return {**out, "exit_steps": list(draw.exit_steps), "prompted": draw.has_text.float().mean().item()}


def check_cold_starts(cfg: ARCConfig, student: DiT) -> None:
    """Refuse cold own-stream starts whose rollout cannot fill the student's context.

    Raises:
        ConfigError: ``own_stream_cold_p`` > 0 and ``rollout_blocks`` < the student's ``window_chunks``.
    """
    if cfg.own_stream_cold_p and cfg.rollout_blocks < student.cfg.window_chunks:
        raise ConfigError(f"own_stream_cold_p needs rollout_blocks >= the model's window_chunks "
                          f"({student.cfg.window_chunks}), so that a cold stream's rollout fills its context; got "
                          f"rollout_blocks {cfg.rollout_blocks}")


def own_stream_iteration(student: DiT, opt_g: torch.optim.Optimizer, streams: OwnStreams, data: LatentSet,
                         starts: torch.Tensor, cfg: ARCConfig, gen: torch.Generator, mel: DecodedMel,
                         ceiling: LevelCeilings | None, rollout_pass: nn.Module | None = None,
                         disc: Discriminator | None = None, opt_d: torch.optim.Optimizer | None = None) -> dict:
    """An own-stream iteration (``lmdm.train.arc.streams``): restart some streams from real crops, continue every
    stream by ``N`` blocks with all ``S`` steps (``own_stream_steps``, else ``student_steps``; with
    ``own_stream_alt_steps`` the second half of the streams with that many; gradient through each block's final
    step), update the student on
    ``level_weight * level anchor + ceiling_weight * band ceiling + momentary_weight * momentary ceiling +
    crest_weight * crest ceiling + frame_weight * frame ceiling + peak_weight * peak ceiling``
    against a fresh real crop of each stream's work,
    and advance the streams. The discriminator is not involved, unless ``own_stream_adv_weight`` > 0: then the
    student's objective adds ``own_stream_adv_weight`` times the relativistic generator loss of the streams that
    went on (not the cold restarts) against that real crop, the discriminator frozen, and the discriminator then
    takes a relativistic step on the same pair (:class:`ARCConfig`).

    With ``own_stream_kick_db`` some contexts are first played louder or quieter (level kicks, see
    :class:`ARCConfig`); with ``own_stream_cold_p`` some restarts start cold, from no context (the stream's first
    seconds, decoded from its first frame), rolled out as their own group; with ``own_stream_drone_p`` some warm
    contexts get a drone (``lmdm.train.arc.drone.with_drone``), and ``loop_gain_weight`` adds the loop-gain term on
    those streams (``lmdm.train.arc.drone.loop_gain_loss``).

    Draws, on ``gen`` and in this order: the restarts, the restarted streams' crops and captions
    (``LatentSet.draw`` over ``starts``) and prompt flags, the real crops of each stream's work, the level kicks
    (which streams, then their gains; only with ``own_stream_kick_db``), which restarts start cold (only with
    ``own_stream_cold_p``), the drones (which streams, their fundamentals, their levels, their rises if
    ``own_stream_drone_rise_db``; only with ``own_stream_drone_p``), the rollout's noise (group by group: by steps, warm before cold), then (only with
    ``own_stream_adv_weight``) the discriminator's timesteps and noise, for every stream.

    Args:
        student, opt_g: the student (updated) and its optimiser.
        streams: the streams' state (updated in place; on the student's device).
        data, starts: the data set and the valid first frames of a ``(W + N) * B`` crop of its training split.
        cfg: rollout length, student steps, prompt dropout (set: :func:`with_pretraining_dropouts`), weights,
            ``own_stream_blocks``, gradient clipping, mixed precision.
        gen: the run's RNG.
        mel: the level anchor's decoder (on the student's device).
        ceiling: the training data's ceilings (:class:`LevelCeilings`), or None (no ceiling terms).
        rollout_pass: :class:`RolloutPass` of ``student`` (None: built here).
        disc, opt_d: the discriminator and its optimiser, needed with ``own_stream_adv_weight`` (else unused).

    Returns:
        ``own_level``, ``own_ceiling``, ``own_momentary``, ``own_crest``, ``own_frame``, ``own_peak`` (the level
        anchor and the ceilings on the own streams), ``stream_blocks``
        (the streams' mean length in blocks after this iteration), ``restarted`` (the fraction restarted),
        ``kicked`` (the fraction kicked), ``cold`` (the fraction started cold) and ``droned`` (the fraction given a
        drone), ``own_adv`` and ``own_d`` (the generator's and the discriminator's relativistic losses on the own
        streams; 0 when off) and ``own_loop`` (the loop-gain term; 0 when off or no drone), floats.

    Raises:
        ConfigError: ``cfg.prompt_dropout`` is None, cold starts the rollout cannot fill
            (:func:`check_cold_starts`), or ``own_stream_adv_weight`` without ``disc`` and ``opt_d``.
    """
    if cfg.prompt_dropout is None:
        raise ConfigError("set the rollout dropouts first (with_pretraining_dropouts)")
    if cfg.own_stream_adv_weight and (disc is None or opt_d is None):
        raise ConfigError("own_stream_adv_weight > 0 needs the discriminator and its optimiser (disc, opt_d)")
    check_cold_starts(cfg, student)
    rollout_pass = rollout_pass or RolloutPass(student)
    dev = next(student.parameters()).device
    C, B, N = student.cfg.context_frames, student.cfg.block_frames, cfg.rollout_blocks
    S = cfg.own_stream_steps or cfg.student_steps
    b, crop = len(streams.blocks), C + N * B
    restart = streams.restarts(N, cfg.own_stream_blocks, gen)
    first, captions = data.draw(starts, b, gen)
    has_text = torch.rand(b, generator=gen, device=gen.device) >= cfg.prompt_dropout
    fresh, _, _ = data.crops(first, captions, crop)
    r = restart.cpu()
    streams.work[restart] = data.frame_work[first[r]].long().to(dev)
    streams.caption[restart] = captions[r].to(dev)
    streams.has_text[restart] = has_text[r].to(dev)
    real_first = same_work_starts(data, streams.work, crop, gen)
    x_real, _, text = data.crops(real_first, streams.caption.cpu(), crop)
    ctx = torch.where(restart[:, None, None], fresh[:, :C].to(dev), streams.context)
    kick = torch.zeros(b, dtype=torch.bool, device=dev)
    if cfg.own_stream_kick_db:
        kick = (torch.rand(b, generator=gen, device=gen.device) < cfg.own_stream_kick_p).to(dev)
        db = (2 * torch.rand(b, generator=gen, device=gen.device) - 1).to(dev) * cfg.own_stream_kick_db
        if bool(kick.any()):
            ctx = torch.where(kick[:, None, None], with_gain(ctx, mel, db, cfg.own_stream_kick_hz), ctx)
    cold = torch.zeros(b, dtype=torch.bool, device=dev)
    if cfg.own_stream_cold_p:
        cold = restart & (torch.rand(b, generator=gen, device=gen.device) < cfg.own_stream_cold_p).to(dev)
        kick &= ~cold  # a cold stream has no context to play louder
    drone = torch.zeros(b, dtype=torch.bool, device=dev)
    if cfg.own_stream_drone_p:  # a sustained low note in the context (lmdm.train.arc.drone)
        drone = ~cold & (torch.rand(b, generator=gen, device=gen.device) < cfg.own_stream_drone_p).to(dev)
        hz = 40.0 + torch.rand(b, generator=gen, device=gen.device) * (cfg.loop_gain_hz - 40.0)
        db = -torch.rand(b, generator=gen, device=gen.device) * cfg.own_stream_drone_db
        rise = None
        if cfg.own_stream_drone_rise_db:
            rise = (torch.rand(b, generator=gen, device=gen.device) * cfg.own_stream_drone_rise_db).to(dev)
        if bool(drone.any()):
            ctx = torch.where(drone[:, None, None], with_drone(ctx, mel, hz.to(dev), db.to(dev), rise, B), ctx)
    student.train()
    rows = torch.arange(b)
    by_steps = [(rows, S)] if not cfg.own_stream_alt_steps else \
        [(rows[: b // 2], S), (rows[b // 2 :], cfg.own_stream_alt_steps)]
    text = text.to(dev)
    parts, order = [], []
    with arc_autocast(dev, cfg.bf16):
        for g, s in by_steps:
            for starts_cold in (False, True):  # a cold stream bootstraps its cache from nothing
                sub = g[cold.cpu()[g] == starts_cold]
                if len(sub):
                    context = ctx[sub][:, :0] if starts_cold else ctx[sub]
                    parts.append(rollout_pass(context, text[sub], streams.has_text[sub], None, [s] * N, s, gen,
                                              cfg.context_noise))
                    order.append(sub)
    back = torch.empty(b, dtype=torch.long)
    back[torch.cat(order)] = rows
    blocks = torch.cat(parts)[back.to(dev)].float()
    seq = torch.cat([ctx, blocks], 1)
    start = C * mel.patch
    decoded = mel(seq)
    fake_mel = decoded[:, start:]
    if bool(cold.any()):  # decoded from the stream's first frame, as the stream's decoder starts
        fake_mel = fake_mel.index_put((cold.nonzero()[:, 0],), mel(blocks[cold]))
    with torch.no_grad():
        real_mel = mel(x_real.to(dev))[:, start:]
    loss_level = level_anchor_loss(fake_mel, real_mel, per_item=cfg.own_stream_per_item)
    ceiling = ceiling or LevelCeilings()
    terms = ceiling.losses(fake_mel, mel)
    total, loss_adv, loss_d = cfg.level_weight * loss_level, torch.zeros(()), torch.zeros(())
    loss_loop = torch.zeros(())
    last = decoded[:, start - B * mel.patch : start]  # the context's last block, where a crescendo got to
    hinged = drone.clone()
    if ceiling.loud_bass is not None:  # and the streams already at a loud bass (loop_gain_quantile)
        hinged |= ~cold & (band_level(last.detach(), mel, cfg.loop_gain_hz) > ceiling.loud_bass)
    if cfg.loop_gain_weight and bool(hinged.any()):  # the drone must not come back louder
        d = hinged.nonzero()[:, 0]
        loss_loop = loop_gain_loss(fake_mel[d], last[d], mel, cfg.loop_gain_hz, cfg.loop_gain_margin_db)
        total = total + cfg.loop_gain_weight * loss_loop
    warm = (~cold).nonzero()[:, 0]
    adversarial = cfg.own_stream_adv_weight > 0
    if adversarial:  # Self-Forcing++'s critic on the student's own long streams (ARCConfig.own_stream_adv_weight)
        t = logit_normal((b,), cfg.t_logit_mean, cfg.t_logit_std, gen).to(dev)[warm]
        eps = torch.randn(seq.shape, generator=gen, device=gen.device).to(dev)[warm]
        scored = (t, text[warm], streams.has_text[warm], C)
        x_r, x_f = add_noise(x_real.to(dev)[warm], eps, t), add_noise(seq[warm], eps, t)
        adversarial = len(warm) > 0
    if adversarial:
        with frozen(disc), arc_autocast(dev, cfg.bf16):
            scores = disc(x_r, *scored), disc(x_f, *scored)
        loss_adv = relativistic_g_loss(*(s.float() for s in scores))
        total = total + cfg.own_stream_adv_weight * loss_adv
    optimizer_step(with_ceilings(total, cfg, ceiling, terms), opt_g, student.parameters(), cfg.grad_clip)
    if adversarial:  # the discriminator's turn, on the same pair; x_f detached, the student untouched
        with arc_autocast(dev, cfg.bf16):
            scores = disc(x_r, *scored), disc(x_f.detach(), *scored)
        loss_d = relativistic_d_loss(*(s.float() for s in scores))
        optimizer_step(loss_d, opt_d, disc.parameters(), cfg.grad_clip)
    streams.context.copy_(seq[:, -C:].detach())
    streams.blocks.copy_(torch.where(restart, N, streams.blocks + N))
    return {"own_level": loss_level.item(),
            **{f"own_{k}": v.item() for k, v in zip(TERMS, terms)},
            "stream_blocks": streams.blocks.float().mean().item(), "restarted": restart.float().mean().item(),
            "kicked": kick.float().mean().item(), "cold": cold.float().mean().item(),
            "droned": drone.float().mean().item(), "hinged": hinged.float().mean().item(),
            "own_loop": loss_loop.item(),
            "own_adv": loss_adv.item(), "own_d": loss_d.item()}


def block_bass_statistic(block: int, bass: torch.Tensor):
    """A ``decoded_summaries`` statistic: the bass level (power of the bands ``bass`` ``(n_mels,)`` bool) of every
    ``block``-frame window of a decoded chunk ``(1, mel_frames, n_mels)``, stride 1, normalised units (``(1, n)``;
    ``(1, 0)`` for a chunk shorter than a block)."""
    def block_bass(part: torch.Tensor, std: float, frames: int) -> torch.Tensor:
        if part.shape[1] < block:
            return part.new_zeros(1, 0)
        return momentary_level(part[..., bass.to(part.device)], std, block)

    return block_bass


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
        CheckpointError, DataError: missing pretrained checkpoint; data without crops of ``(W + rollout_blocks)
            * B`` frames, or whose training split cannot give every caption a contrastive negative (one work).
        ConfigError: an override names an unknown field.
        UsageError: the device is not available, or ``batch_size`` is not a multiple of the processes.
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
    distributed.barrier()  # every rank has read the run folder before rank 0 writes into it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = load_checkpoint(cfg.init_from, device=distributed.device)
    settled = with_pretraining_dropouts(cfg, base.info)  # the config as run; config.json keeps the given one
    student = base.model
    student.requires_grad_(True)
    torch.manual_seed(cfg.seed)  # the discriminator head's initialisation is part of the run
    if not 1 <= cfg.disc_layers <= student.cfg.n_layers:
        raise ConfigError(f"disc_layers must be 1..{student.cfg.n_layers} (the layers of {cfg.init_from}), "
                          f"got {cfg.disc_layers}")
    check_cold_starts(cfg, student)  # before the data loads
    disc = Discriminator(student, cfg.disc_layers, cfg.disc_head_width).to(distributed.device)
    mel = DecodedMel(base.codec).to(distributed.device)
    opt_g = torch.optim.AdamW(student.parameters(), lr=cfg.lr_g, betas=(0.0, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_d, betas=(0.0, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    with distributed.main_first():  # rank 0 writes the data cache, the others read it
        data = encode_latent_set(load_latent_set(cfg.data, base.codec.cfg, progress=progress and distributed.is_main),
                                 base.codec)
    crop = (student.cfg.window_chunks + cfg.rollout_blocks) * student.cfg.block_frames
    starts = data.valid_starts("train", crop)
    negatives = Negatives.of(data, "train")
    # the training split's ceilings: loudest decoded mel per band, quantiles of its 0.4 s levels and of its frame
    # crests (deterministic: not saved)
    train_works = split_works(data, "train")
    # and the level guard's ceilings for the export (lmdm.streaming.level_guard.level_ceilings): one decode for all
    wanted = guard_statistics()
    if cfg.ceiling_weight > 0:
        wanted["band"] = None
    if cfg.momentary_weight > 0:
        wanted["momentary"] = momentary_level
    if cfg.crest_weight > 0:
        wanted["crest"] = frame_crest
    if cfg.loop_gain_quantile is not None:  # one-block bass levels, for the loop-gain term's loud streams
        wanted["block_bass"] = block_bass_statistic(student.cfg.block_frames * mel.patch, mel.band_hz < cfg.loop_gain_hz)
    summary = decoded_summaries(mel, train_works, wanted)
    ceiling = LevelCeilings(band=summary.get("band"),
                            momentary=float(np.quantile(summary["momentary"], cfg.momentary_quantile))
                            if cfg.momentary_weight > 0 else None,
                            crest=float(np.quantile(summary["crest"], cfg.crest_quantile)) if cfg.crest_weight > 0
                            else None,
                            # the guard's frame levels, already decoded (guard_statistics)
                            frame=float(np.quantile(summary["frame_level_ceiling"], cfg.frame_quantile))
                            if cfg.frame_weight > 0 else None,
                            peak=10 ** (cfg.peak_dbfs / 20) if cfg.peak_weight > 0 else None,
                            loud_bass=float(np.quantile(summary["block_bass"], cfg.loop_gain_quantile))
                            if cfg.loop_gain_quantile is not None else None)
    guard_ceilings = ceilings_of(summary)
    del summary
    streams = None
    if cfg.own_stream_every:
        if distributed.active:
            raise ConfigError("own_stream_every runs on one process; for a torchrun run set it to 0, and with it "
                              "the loop-gain term that acts on own streams (lmdm arc --set own_stream_every=0 "
                              "--set loop_gain_weight=0)")
        streams = OwnStreams(cfg.batch_size, student.cfg.context_frames, student.cfg.latent_channels)
        streams.to(distributed.device)
    # clean_cond conditions only the cache writes, which run without gradient: unused in the rollout's graph
    rollout_pass = distributed.wrap(RolloutPass(student), find_unused_parameters=True)
    score_pass = distributed.wrap(ScorePass(disc), find_unused_parameters=True)

    recent = {}  # the last real-context iteration's metrics, logged beside an own-stream iteration's

    def train_step(state: LoopState) -> dict:
        if streams is not None and (state.step + 1) % cfg.own_stream_every == 0:
            return {**recent, **own_stream_iteration(student, opt_g, streams, data, starts, settled, gen, mel,
                                                     ceiling, rollout_pass, disc, opt_d)}
        first, captions = data.draw(starts, cfg.batch_size, gen)
        negative = negatives.draw(captions, gen)  # the whole batch's, on every rank alike
        rows = plan.rows
        x0, features, text = data.crops(first[rows], captions[rows], crop)
        batch = ARCBatch(x0, text, data.captions[negative[rows]], features)
        rank_gen = gen
        if distributed.active:  # per-rank rollouts; the shared generator advances identically on every rank
            seed = int(torch.randint(2**62, (), generator=gen))
            rank_gen = torch.Generator().manual_seed(seed + distributed.rank)
        out = arc_iteration(student, disc, opt_g, opt_d, batch, settled, rank_gen, mel, rollout_pass, score_pass,
                            ceiling)
        for k in ("loss_g", "loss_level", *(f"loss_{t}" for t in TERMS), "loss_d", "loss_c", "d_real", "d_fake",
                  "prompted"):
            out[k] = distributed.mean(out[k])
        recent.update(out)
        return out

    def export_info(state: LoopState) -> dict:
        return {"arc_step": state.step, "arc_hours_cpu": round(state.elapsed_s / 3600, 3), "base": cfg.init_from,
                "discriminator_params": disc.num_params(),
                "sampler": {"sampler": "pingpong", "steps": cfg.student_steps, "cfg_scale": 1.0},
                "arc_config": to_dict(settled), "base_info": {k: base.info.get(k) for k in ("step", "val_loss")},
                **guard_ceilings}

    modules = {"model": student, "disc": disc} | ({} if streams is None else {"streams": streams})
    task = Task(modules=modules, optimizers={"g": opt_g, "d": opt_d}, generator=gen,
                train_step=train_step, save_model=lambda path, m, info: save_checkpoint(path, m, base.codec, info),
                export_info=export_info, ema_decay=lambda n: cfg.ema_decay)
    metrics = ("loss_g", "loss_level", "loss_d", "loss_c", "d_real", "d_fake", "loss_ceiling", "own_level",
               "own_ceiling", "stream_blocks", *(f"{kind}_{t}" for t in TERMS[1:] for kind in ("loss", "own")),
               "own_adv", "own_d", "own_loop")
    settings = LoopSettings(run_dir=run, steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                            keep_checkpoints=cfg.keep_checkpoints, max_hours=cfg.max_hours, export_dir=cfg.export_dir,
                            columns=tuple((k, ".5f") for k in metrics),
                            postfix=(("g", "loss_g"), ("lvl", "loss_level"), ("d", "loss_d"), ("c", "loss_c")),
                            desc="ARC-Forcing", unit="it", progress=progress, distributed=distributed)
    if distributed.is_main:
        write_config(run, cfg)
    out = run_loop(settings, task, resume_from=existing)
    return ARCResult(step=out.state.step, hours=out.hours, final_dir=out.final_dir, disc_params=disc.num_params(),
                     last=out.state.last)
