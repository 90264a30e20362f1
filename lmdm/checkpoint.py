"""Inference checkpoints: ``model.safetensors`` (weights, never pickle) + ``config.json`` (everything else).

``config.json`` holds ``{"format": "lmdm-checkpoint", "version": 1, "model": DiTConfig, "codec": CodecConfig,
"text_encoder": ..., "info": {...}}``. Writing is atomic (a temporary folder renamed into place), so an
interrupted save never leaves a half-written checkpoint under the final name. Loading checks the format, the
config keys (unknown keys are an error listing the valid ones) and that the weights match the model exactly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmdm.atomic import atomic_folder
from lmdm.audio.codec import CodecConfig
from lmdm.config import ConfigError, from_dict, read_json, to_dict
from lmdm.errors import LmdmError
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.text import ENCODER_ID

FORMAT = "lmdm-checkpoint"
VERSION = 1


class CheckpointError(LmdmError, RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or for another model; the message says which file."""


@dataclass
class Checkpoint:
    """A loaded inference checkpoint: the model (eval mode, float32), its codec config and free-form info."""

    model: DiT
    codec: CodecConfig
    info: dict = field(default_factory=dict)
    path: Path | None = None


def repo_root() -> Path:
    """The source checkout this package lives in (where ``data/`` is)."""
    return Path(__file__).resolve().parent.parent


def default_checkpoint() -> Path:
    """The bundled checkpoint: ``$LMDM_CHECKPOINT`` if set, else ``data/checkpoints/lmdm-small`` of the checkout."""
    env = os.environ.get("LMDM_CHECKPOINT")
    return Path(env) if env else repo_root() / "data" / "checkpoints" / "lmdm-small"


def save_checkpoint(path: str | Path, model: DiT, codec: CodecConfig, info: dict | None = None,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write an inference checkpoint folder atomically.

    Args:
        path: destination folder (replaced if it exists).
        model: the DiT whose weights are stored.
        codec: the codec the model was trained with.
        info: JSON-serialisable extras (training step, data hours, validation loss...).
        dtype: storage dtype of floating-point weights (bf16 halves the size; loading upcasts to float32).
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, "model": to_dict(model.cfg), "codec": to_dict(codec),
            "text_encoder": ENCODER_ID, "info": info or {}}
    with atomic_folder(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return path


def read_config(path: str | Path) -> dict:
    """The parsed ``config.json`` of a checkpoint folder.

    Raises:
        CheckpointError: folder or file missing, not JSON, or not an lmdm checkpoint.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not an lmdm checkpoint: {cfg_file.name} is missing")
    meta = read_json(cfg_file, CheckpointError, "checkpoint config")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file} is not an lmdm checkpoint config (format must be {FORMAT!r})")
    valid = {"format", "version", "model", "codec", "text_encoder", "info"}
    unknown = sorted(set(meta) - valid)
    if unknown:
        raise CheckpointError(f"{cfg_file}: unknown key(s) {unknown}; valid keys are: {', '.join(sorted(valid))}")
    return meta


def load_checkpoint(path: str | Path | None = None) -> Checkpoint:
    """Load an inference checkpoint folder (default: :func:`default_checkpoint`).

    Raises:
        CheckpointError: missing or corrupt files, an invalid config, or weights that do not fit the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_checkpoint()
    meta = read_config(path)
    try:
        model_cfg = from_dict(DiTConfig, meta["model"], where=f"{path}/config.json:model")
        codec_cfg = from_dict(CodecConfig, meta["codec"], where=f"{path}/config.json:codec")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"invalid checkpoint config in {path}: {e}") from e
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path} is incomplete: model.safetensors is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or not a safetensors file ({e})") from e
    model = DiT(model_cfg)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} does not match the model in config.json: {str(e)[:400]}") from e
    model.eval().requires_grad_(False)
    return Checkpoint(model=model, codec=codec_cfg, info=meta.get("info", {}), path=path)
