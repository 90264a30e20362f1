"""The one training loop, shared by pretraining (``lmdm train``) and ARC-Forcing (``lmdm arc``).

A task (``lmdm.train.pretrain``, ``lmdm.train.arc.trainer``) builds its modules and optimisers and says how to do
one step; this loop does everything around it, once (the torchtitan / nanoGPT ``train.py`` pattern, STYLE.md):

* settling the config of a fresh or resumed run (:func:`settle_config`: which fields a resume may change);
* learning-rate schedules as ``torch.optim.lr_scheduler.LambdaLR`` and the EMA of the weights as
  ``torch.optim.swa_utils.AveragedModel``;
* checkpoints every ``ckpt_every`` steps, on ``KeyboardInterrupt`` and at the end (``lmdm.train.state``, atomic),
  and resuming from one exactly (weights, optimisers, schedulers, EMA, RNG, metrics);
* the CSV log ``RUN/log.csv``, a tqdm bar, the ``max_hours`` limit and the final export of the EMA weights to
  ``RUN/final`` (and ``export_dir``);
* data parallelism (``lmdm.train.distributed``): with several ``torchrun`` processes every rank runs this loop on
  its share of each batch (the task wraps its modules in DDP); only rank 0 writes checkpoints (atomically), the
  log, the progress bar and the final model, the others wait for it at a barrier; all ranks stop together
  (``max_hours``). Checkpoints hold no rank-specific state, so a run resumes on any number of processes.
* the device type a run trains on is saved with every checkpoint; a resume on another type (a CPU run moved to a
  GPU, say) works but warns, in one line, that its numerics change (other kernels, maybe another autocast dtype).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from lmdm.atomic import write_text
from lmdm.config import load_json, replace, to_dict
from lmdm.errors import LmdmError
from lmdm.train.distributed import SINGLE, Distributed
from lmdm.train.state import latest_checkpoint, load_training_state, save_training_state


def settle_config(cls: type, cfg: Any | None, *, resume: bool, run_dir: str | Path | None,
                  overrides: dict | None, changeable: set[str], error: type[LmdmError]):
    """The config a run starts or resumes with, its folder and the checkpoint to resume from.

    On resume the run's own ``config.json`` wins; a given config and ``overrides`` may change only the fields in
    ``changeable`` (the length, intervals, output folders). ``run_dir`` is always the folder actually used.

    Args:
        cls: the config dataclass (``TrainConfig``, ``ARCConfig``).
        cfg: the given config; with ``resume`` it may be None.
        resume: continue the run's latest checkpoint if there is one (else start fresh from ``cfg``).
        run_dir: overrides ``cfg.run_dir``.
        overrides: fields to change after the config is settled (e.g. ``{"steps": 40000}``).
        changeable: fields a resume may change.
        error: the error class raised for what the user must fix.

    Returns:
        ``(cfg, run_path, checkpoint_or_None)``.

    Raises:
        error: no config and no run folder; a fresh run into a folder that already holds checkpoints; a resume
            that changes a field outside ``changeable``; nothing to resume and no config.
        ConfigError: an override names an unknown field, or the saved config is invalid.
    """
    if cfg is None and run_dir is None:
        raise error("give a config (--config) or, to resume, the run folder (--run-dir)")
    run = Path(run_dir if run_dir is not None else cfg.run_dir)
    existing = latest_checkpoint(run)
    if existing is not None and not resume:
        raise error(f"{run} already holds checkpoints ({existing.name}); pass --resume to continue it, "
                    "or choose another run_dir")
    if existing is not None:
        saved_file = run / "config.json"
        if not saved_file.is_file():
            raise error(f"{run} holds checkpoints but no config.json; it cannot be resumed")
        saved = load_json(cls, saved_file)
        given = replace(saved if cfg is None else cfg, **(overrides or {}))
        a, b = to_dict(saved), to_dict(given)
        differ = sorted(k for k in a if a[k] != b[k] and k not in changeable)
        if differ:
            raise error(f"--resume with a config that differs from the run's in {differ}; only "
                        f"{sorted(changeable)} may change. Use another run_dir for a new run.")
        cfg = dataclasses.replace(saved, **{k: getattr(given, k) for k in changeable})
    elif cfg is None:
        raise error(f"nothing to resume in {run} and no config given")
    else:
        cfg = replace(cfg, **(overrides or {}))
    return dataclasses.replace(cfg, run_dir=str(run)), run, existing


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters, grad_clip: float | None) -> float:
    """One optimiser step on ``loss``: zero the gradients, backpropagate, clip the gradient norm to ``grad_clip``
    (None: no clipping) and step. Returns the learning rate the step used (for the log)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return apply_gradients(optimizer, parameters, grad_clip)


def apply_gradients(optimizer: torch.optim.Optimizer, parameters, grad_clip: float | None) -> float:
    """The second half of :func:`optimizer_step`, for gradients accumulated over micro-batches: clip the gradient
    norm to ``grad_clip`` (None: no clipping) and step. Returns the learning rate the step used."""
    lr = optimizer.param_groups[0]["lr"]
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    return lr


def smoothed_loss(state: "LoopState", loss: float, key: str = "train_loss", momentum: float = 0.98) -> float:
    """The exponential moving average of the training loss the progress bar shows (``state.latest[key]`` carries
    it from step to step and through a resume)."""
    previous = state.latest.get(key)
    return loss if previous is None else momentum * previous + (1 - momentum) * loss


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor of optimiser step ``step`` (0-based): linear warm-up ``(step + 1) / warmup_steps``,
    then cosine decay from 1 to ``min_ratio`` at ``total_steps`` (Loshchilov & Hutter 2017, SGDR eq. 5, one
    cycle; held at ``min_ratio`` after). Multiply by the base learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_multi_avg_fn(decay_at: Callable[[int], float]):
    """An ``AveragedModel`` ``multi_avg_fn``: ``ema <- d ema + (1 - d) p`` with ``d = decay_at(n)``, ``n`` the
    number of updates so far (the first, a copy, is update 0). A constant ``decay_at`` is torch's
    ``get_ema_multi_avg_fn``; a growing one is the usual EMA warm-up ``min(decay, (1 + n) / (10 + n))``."""
    @torch.no_grad()
    def avg(ema_params: list[torch.Tensor], params: list[torch.Tensor], n: torch.Tensor) -> None:
        d = decay_at(int(n))
        for e, p in zip(ema_params, params):
            e.lerp_(p, 1 - d)
    return avg


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs to know besides the task.

    Attributes:
        run_dir: the run folder (``log.csv``, ``ckpt/``, ``final/``).
        steps: total steps (a resumed run continues up to it).
        ckpt_every, log_every: intervals in steps.
        keep_checkpoints: training checkpoints kept on disk.
        max_hours: stop (with a checkpoint) after this many hours of wall time over all sessions; 0 = no limit.
        export_dir: if set, the final EMA model is also saved here.
        columns: CSV columns after ``step``: ``(metric, format spec)``; a metric missing at a step logs "".
        throughput: a metric summed between log rows and logged as ``NAME_per_s`` (after ``elapsed_s``).
        postfix: tqdm postfix ``(label, metric)`` from the newest value of each metric.
        desc, unit: tqdm labels.
        progress: show the tqdm bar (on rank 0).
        distributed: this process's place in a data-parallel run (:data:`lmdm.train.distributed.SINGLE`: one
            process).
    """

    run_dir: Path
    steps: int
    ckpt_every: int
    log_every: int
    keep_checkpoints: int = 2
    max_hours: float = 0.0
    export_dir: str | None = None
    columns: tuple[tuple[str, str], ...] = ()
    throughput: str | None = None
    postfix: tuple[tuple[str, str], ...] = ()
    desc: str = "training"
    unit: str = "step"
    progress: bool = True
    distributed: Distributed = SINGLE


@dataclass
class LoopState:
    """What the loop knows at a step; handed to the task's hooks and saved with every checkpoint.

    Attributes:
        step: steps done.
        elapsed_s: wall time of this run over all its sessions.
        last: metrics of the last step (``train_step``'s dict).
        latest: the newest value of every metric ever returned (by ``train_step`` or ``validate``).
        history: one dict per validation ``{"step": ..., **validate's metrics}``.
        ema: the EMA module (``AveragedModel.module``), e.g. for validation.
    """

    step: int = 0
    elapsed_s: float = 0.0
    last: dict = field(default_factory=dict)
    latest: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    ema: torch.nn.Module | None = None


@dataclass
class Task:
    """The task-specific parts of a run.

    Attributes:
        modules: ``{name: module}`` trained and checkpointed (``name.safetensors``).
        optimizers: ``{name: optimizer}`` (the name ``""`` keeps the plain tensor names of one optimiser).
        generator: the run's RNG (data, noise, dropout); checkpointed.
        train_step: ``train_step(state) -> metrics``: one step on one batch (sample, forward, backward, optimiser
            steps); the loop then steps the schedulers and the EMA and counts the step.
        save_model: ``save_model(path, module, info) -> path`` writes an inference checkpoint.
        export_info: ``export_info(state) -> dict``: the info stored with the final model.
        ema_decay: ``ema_decay(n)``: decay of the EMA update after step ``n`` (1-based; update 0 copies the
            initial weights).
        ema_of: name of the module whose weights are averaged.
        lr_factor: ``{optimizer name: factor(step)}``: a ``LambdaLR`` per named optimiser (the others keep
            their learning rate).
        validate: ``validate(state) -> metrics or None`` after each step; metrics are logged and kept in
            ``history``.
    """

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    generator: torch.Generator
    train_step: Callable[[LoopState], dict]
    save_model: Callable[[Path, torch.nn.Module, dict], Path]
    export_info: Callable[[LoopState], dict]
    ema_decay: Callable[[int], float]
    ema_of: str = "model"
    lr_factor: dict[str, Callable[[int], float]] = field(default_factory=dict)
    validate: Callable[[LoopState], dict | None] | None = None


@dataclass
class LoopResult:
    """The state at the end (stopped by ``steps`` or ``max_hours``) and the final model's folder."""

    state: LoopState
    final_dir: Path

    @property
    def hours(self) -> float:
        """Wall-clock hours over all sessions of the run."""
        return self.state.elapsed_s / 3600


def _format(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def logged_columns(log_path: Path, columns: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The metric columns of an existing ``log.csv`` (between ``step`` and ``elapsed_s``), each with its format in
    ``columns`` (``.5g`` for one the code no longer logs, which then stays empty): a run resumed after the code
    gained or lost a metric keeps appending rows under its own header."""
    with open(log_path, newline="") as f:
        header = next(csv.reader(f), [])
    spec = dict(columns)
    names = header[1 : header.index("elapsed_s")] if "elapsed_s" in header else [c for c, _ in columns]
    return tuple((name, spec.get(name, ".5g")) for name in names)


def run_loop(settings: LoopSettings, task: Task, resume_from: Path | None = None) -> LoopResult:
    """Train ``task`` to ``settings.steps`` (or ``max_hours``), resuming from a training checkpoint if given.

    Per step: ``train_step``; the LR schedulers and the EMA step; ``validate``; a log row every ``log_every``
    steps (and at validations); a checkpoint every ``ckpt_every`` steps. ``KeyboardInterrupt`` saves a checkpoint
    and re-raises. At the end: a checkpoint of the last step, then the EMA model to ``RUN/final`` and
    ``export_dir`` via ``save_model``. A resumed run continues exactly as the uninterrupted run would have.
    With several processes, rank 0 alone writes (checkpoints, log, bar, final model) while the others wait at a
    barrier; every rank returns the same state.

    Raises:
        whatever the hooks raise (a checkpoint is saved first only for ``KeyboardInterrupt``).
    """
    from tqdm.auto import tqdm

    run = Path(settings.run_dir)
    d = settings.distributed
    schedulers = {name: LambdaLR(task.optimizers[name], f) for name, f in task.lr_factor.items()}
    ema = AveragedModel(task.modules[task.ema_of], multi_avg_fn=ema_multi_avg_fn(task.ema_decay),
                        use_buffers=True)
    ema.update_parameters(task.modules[task.ema_of])  # update 0 copies the initial weights
    state = LoopState(ema=ema.module)
    if resume_from is not None:
        ema_sd, saved = load_training_state(resume_from, task.modules, task.optimizers, task.generator)
        ema.module.load_state_dict(ema_sd)
        state.step, state.elapsed_s = saved["step"], saved.get("elapsed_s", 0.0)
        state.last, state.latest = saved.get("last", {}), saved.get("latest", {})
        state.history = saved.get("history", [])
        trained_on = saved.get("device", "cpu")  # checkpoints from before the device was saved: CPU-only code
        if trained_on != d.device.type and d.is_main:
            warnings.warn(f"{run} was trained on {trained_on} and resumes on {d.device.type}: the numerics differ "
                          f"(other kernels, maybe another autocast dtype), so it will not continue exactly as it "
                          f"would have on {trained_on}", stacklevel=2)
        ema.n_averaged.fill_(saved.get("ema_updates", state.step + 1))
        for name, sched in schedulers.items():
            if name in saved.get("schedulers", {}):
                sched.load_state_dict(saved["schedulers"][name])
            else:
                sched.last_epoch = state.step
            # the factor comes from the current settings (a resume may extend ``steps``): recompute this step's LR
            for group, base, f in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * f(sched.last_epoch)
    run.mkdir(parents=True, exist_ok=True)
    log_path = run / "log.csv"
    new_log = not log_path.exists()
    columns = settings.columns if new_log or not d.is_main else logged_columns(log_path, settings.columns)
    log_file = open(log_path, "a", newline="") if d.is_main else open(os.devnull, "w")
    log = csv.writer(log_file)
    if new_log and d.is_main:
        log.writerow(["step", *(c for c, _ in columns), "elapsed_s"]
                     + ([f"{settings.throughput}_per_s"] if settings.throughput else []))
    t0, elapsed_before = time.time(), state.elapsed_s
    count, t_log = 0.0, t0

    def tick() -> None:
        state.elapsed_s = elapsed_before + time.time() - t0

    def checkpoint(sync: bool = True) -> None:
        """Rank 0 saves; with ``sync`` every rank waits until it has (not after an interrupt: the others may be
        gone)."""
        tick()
        extra = {"elapsed_s": state.elapsed_s, "device": d.device.type, "last": state.last, "latest": state.latest,
                 "history": state.history, "ema_updates": int(ema.n_averaged),
                 "schedulers": {name: s.state_dict() for name, s in schedulers.items()}}
        if d.is_main:
            save_training_state(run, state.step, task.modules, ema.module.state_dict(), task.optimizers,
                                task.generator, extra, keep=settings.keep_checkpoints)
        if sync:
            d.barrier()

    bar = tqdm(total=settings.steps, initial=state.step, desc=settings.desc, unit=settings.unit,
               disable=not (settings.progress and d.is_main))
    try:
        while state.step < settings.steps:
            tick()
            if settings.max_hours and d.any(state.elapsed_s / 3600 >= settings.max_hours):
                break
            metrics = task.train_step(state)
            for sched in schedulers.values():
                sched.step()
            ema.update_parameters(task.modules[task.ema_of])
            state.step += 1
            state.last = metrics
            state.latest.update(metrics)
            val = task.validate(state) if task.validate is not None else None
            if val:
                state.latest.update(val)
                state.history.append({"step": state.step, **val})
            if settings.throughput:
                count += metrics.get(settings.throughput, 0)
            if state.step % settings.log_every == 0 or val:
                tick()
                now = time.time()
                row = {**metrics, **(val or {})}
                log.writerow([state.step, *(_format(row.get(c), spec) for c, spec in columns),
                              f"{state.elapsed_s:.1f}"]
                             + ([f"{count / max(now - t_log, 1e-9):.0f}"] if settings.throughput else []))
                log_file.flush()
                count, t_log = 0.0, now
            if state.step % settings.ckpt_every == 0:
                checkpoint()
            bar.update(1)
            bar.set_postfix({label: f"{state.latest[m]:.4f}" for label, m in settings.postfix
                             if isinstance(state.latest.get(m), float)})
    except KeyboardInterrupt:
        checkpoint(sync=False)
        raise
    finally:
        bar.close()
        log_file.close()
    if state.step % settings.ckpt_every:  # the loop already saved this step
        checkpoint()
    tick()
    info = task.export_info(state)
    final = run / "final"
    if d.is_main:
        final = task.save_model(final, ema.module, info)
        if settings.export_dir:
            task.save_model(Path(settings.export_dir), ema.module, info)
    d.barrier()
    return LoopResult(state=state, final_dir=final)


def write_config(run: Path, cfg: Any) -> None:
    """Write the run's settled config to ``RUN/config.json`` (atomically)."""
    run.mkdir(parents=True, exist_ok=True)
    write_text(run / "config.json", json.dumps(to_dict(cfg), indent=2))
