"""Training checkpoints: model, EMA, optimiser and RNG state in safetensors, the rest in JSON; written atomically.

Layout under ``RUN/ckpt/``::

    step-000500/model.safetensors   trained weights (float32)
    step-000500/ema.safetensors     EMA weights (float32)
    step-000500/optim.safetensors   AdamW moments per parameter index, plus the RNG state
    step-000500/state.json          step, optimiser hyper-parameters, log of validation losses
    latest                          the name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete; ``latest`` is replaced
atomically afterwards. A run killed at any moment resumes from the last complete checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lmdm.audio.io import _umask


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


def save_training_state(run_dir: str | Path, step: int, model: torch.nn.Module | dict[str, torch.nn.Module],
                        ema: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer],
                        generator: torch.Generator, extra: dict, keep: int = 2) -> Path:
    """Write ``RUN/ckpt/step-XXXXXX`` atomically, point ``latest`` at it and delete all but ``keep`` newest.

    ``model`` may be several modules ``{name: module}`` (each saved as ``name.safetensors``; a lone module is
    "model") and ``optimizer`` several ``{name: optimizer}`` (a lone one is unnamed).
    """
    from safetensors.torch import save_file

    modules = model if isinstance(model, dict) else {"model": model}
    optimizers = optimizer if isinstance(optimizer, dict) else {"": optimizer}
    ckpt = Path(run_dir) / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=ckpt))
    try:
        for mname, module in modules.items():
            save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{mname}.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        tensors = {"rng_state": generator.get_state()}
        state = {"step": step, **extra}
        for oname, opt in optimizers.items():
            osd = opt.state_dict()
            prefix = f"{oname}." if oname else ""
            for idx, st in osd["state"].items():
                for key, val in st.items():
                    tensors[f"{prefix}{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
            state["param_groups" + (f"_{oname}" if oname else "")] = osd["param_groups"]
        save_file(tensors, str(tmp / "optim.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        os.chmod(tmp, 0o777 & ~_umask())
        final = ckpt / name
        old = ckpt / f".{name}.old"
        if final.exists():  # the same step again: move the complete one aside, never delete it first
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    fd, ptmp = tempfile.mkstemp(prefix=".latest-", dir=ckpt)
    with os.fdopen(fd, "w") as f:
        f.write(name)
    os.replace(ptmp, ckpt / "latest")
    older = sorted(p for p in ckpt.glob("step-*") if p.is_dir() and p.name < name)  # never prune what was just written
    for stale in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return ckpt / name


def load_training_state(path: Path, model: torch.nn.Module | dict[str, torch.nn.Module],
                        optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer],
                        generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore modules, optimisers and RNG from a checkpoint folder; returns ``(ema, state_json)``."""
    from safetensors.torch import load_file

    modules = model if isinstance(model, dict) else {"model": model}
    optimizers = optimizer if isinstance(optimizer, dict) else {"": optimizer}
    for mname, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{mname}.safetensors")))
    ema = load_file(str(path / "ema.safetensors"))
    state = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optim.safetensors"))
    generator.set_state(tensors.pop("rng_state"))
    for oname, opt in optimizers.items():
        prefix = f"{oname}." if oname else ""
        opt_state: dict[int, dict] = {}
        for key, val in tensors.items():
            rest = key[len(prefix):] if key.startswith(prefix) else None
            if rest is None or (not oname and not rest.split(".", 1)[0].isdigit()):
                continue
            idx, name = rest.split(".", 1)
            if idx.isdigit():
                opt_state.setdefault(int(idx), {})[name] = val
        opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups" + (f"_{oname}" if oname else "")]})
    return ema, state


def export_from_run(run_dir: str | Path, out: str | Path, checkpoint: Path | None = None) -> Path:
    """Write an inference checkpoint (EMA weights) from a run's latest (or the given) training checkpoint.

    Raises:
        FileNotFoundError: the run has no complete checkpoint.
    """
    from safetensors.torch import load_file

    from lmdm.checkpoint import save_checkpoint
    from lmdm.config import from_dict
    from lmdm.model.dit import DiT
    from lmdm.train.config import TrainConfig

    run_dir = Path(run_dir)
    path = checkpoint or latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no complete training checkpoint to export")
    cfg = from_dict(TrainConfig, json.loads((run_dir / "config.json").read_text()), where=str(run_dir / "config.json"))
    model = DiT(cfg.model)
    model.load_state_dict(load_file(str(path / "ema.safetensors")))
    state = json.loads((path / "state.json").read_text())
    info = {"step": state["step"], "exported_from": str(path), "history": state.get("history", [])[-3:]}
    return save_checkpoint(out, model, cfg.codec, info)
