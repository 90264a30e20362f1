"""Training checkpoints: modules, EMA, optimiser and RNG state in safetensors, the rest in JSON; written atomically.

Layout under ``RUN/ckpt/``::

    step-000500/model.safetensors   trained weights, one file per module (``disc.safetensors`` for ARC's
                                    discriminator ...)
    step-000500/ema.safetensors     EMA weights (float32)
    step-000500/optim.safetensors   optimiser moments per parameter index (prefixed ``NAME.`` for named
                                    optimisers), plus the RNG state
    step-000500/state.json          step, optimiser hyper-parameters, LR-scheduler and EMA counters, metrics,
                                    the device type trained on
    latest                          the name of the newest complete checkpoint

Nothing is pickled. Tensors are written from the CPU whatever device trained them; loading puts the weights and
optimiser moments back on the modules' devices (``load_state_dict`` copies into the parameters). A checkpoint
folder is written with :func:`lmdm.atomic.atomic_folder` (a temporary folder renamed into place when complete)
and ``latest`` with :func:`lmdm.atomic.write_text`, so a run killed at any moment (or an exception while saving)
leaves the previous checkpoint complete and loadable.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmdm.atomic import atomic_folder, write_text


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete training checkpoint of a run (the one ``latest`` names, else the highest complete
    ``step-*`` folder), or None."""
    ckpt = Path(run_dir) / "ckpt"
    pointer = ckpt / "latest"
    if pointer.is_file():
        path = ckpt / pointer.read_text().strip()
        if (path / "state.json").is_file():
            return path
    complete = sorted(p for p in ckpt.glob("step-*") if (p / "state.json").is_file())
    return complete[-1] if complete else None


def _optim_key(name: str) -> tuple[str, str]:
    """Tensor prefix and JSON key of an optimiser; the unnamed one (``""``) keeps the plain names."""
    return (f"{name}." if name else ""), ("param_groups" + (f"_{name}" if name else ""))


def save_training_state(run_dir: str | Path, step: int, modules: dict[str, torch.nn.Module],
                        ema: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer],
                        generator: torch.Generator, extra: dict, keep: int = 2) -> Path:
    """Write ``RUN/ckpt/step-XXXXXX`` atomically, point ``latest`` at it and delete all but ``keep`` newest.

    Args:
        run_dir: the run folder.
        step: optimiser steps done (names the folder).
        modules: ``{name: module}``, each saved as ``name.safetensors``.
        ema: EMA state dict (``ema.safetensors``).
        optimizers: ``{name: optimizer}``; tensors go to ``optim.safetensors``, hyper-parameters to JSON.
        generator: the run's RNG (its state is saved with the optimiser tensors).
        extra: JSON-serialisable extras stored in ``state.json`` beside ``step``.
        keep: complete checkpoints kept (the one just written included).

    Returns:
        the checkpoint folder.
    """
    ckpt = Path(run_dir) / "ckpt"
    name = f"step-{step:06d}"
    tensors = {"rng_state": generator.get_state()}
    state = {"step": step, **extra}
    for oname, opt in optimizers.items():
        prefix, key = _optim_key(oname)
        osd = opt.state_dict()
        for idx, st in osd["state"].items():
            for k, val in st.items():
                tensors[f"{prefix}{idx}.{k}"] = val.detach().cpu() if torch.is_tensor(val) else torch.tensor(val)
        state[key] = osd["param_groups"]
    with atomic_folder(ckpt / name) as tmp:
        for mname, module in modules.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      str(tmp / f"{mname}.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        save_file(tensors, str(tmp / "optim.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    write_text(ckpt / "latest", name)
    older = sorted(p for p in ckpt.glob("step-*") if p.is_dir() and p.name < name)  # never prune what was just written
    for stale in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    for leftover in ckpt.glob(".step-*.tmp-*"):  # half-written folders of a killed process
        shutil.rmtree(leftover, ignore_errors=True)
    return ckpt / name


def load_training_state(path: str | Path, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer],
                        generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore modules, optimisers and RNG from a checkpoint folder written by :func:`save_training_state`.

    Returns:
        ``(ema_state_dict, state_json)``.

    Raises:
        FileNotFoundError: a file of the checkpoint is missing.
        RuntimeError: the weights do not fit the modules (``load_state_dict``'s error).
    """
    path = Path(path)
    for mname, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{mname}.safetensors")))
    ema = load_file(str(path / "ema.safetensors"))
    state = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optim.safetensors"))
    generator.set_state(tensors.pop("rng_state"))
    for oname, opt in optimizers.items():
        prefix, key = _optim_key(oname)
        opt_state: dict[int, dict] = {}
        for tname, val in tensors.items():
            if not tname.startswith(prefix):
                continue
            idx, _, field = tname[len(prefix):].partition(".")
            if idx.isdigit():  # the unnamed optimiser's prefix "" also matches "g.0.step": skip those
                opt_state.setdefault(int(idx), {})[field] = val
        opt.load_state_dict({"state": opt_state, "param_groups": state[key]})
    return ema, state
