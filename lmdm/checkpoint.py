"""Inference checkpoints: ``model.safetensors`` (weights, never pickle) + ``config.json`` (everything else), and
``autoencoder.safetensors`` when the model diffuses a learned latent (``lmdm.audio.autoencoder``).

``config.json`` holds ``{"format": "lmdm-checkpoint", "version": 2, "model": DiTConfig, "codec": CodecConfig,
"autoencoder": AutoencoderConfig or null, "text_encoder": ..., "info": {...}}``. A checkpoint carries its whole
codec, so a model can never be decoded with a latent it was not trained on. Version 1 checkpoints (the raw-mel
latent of lmdm before the learned latent) are refused with a message, not decoded. Writing is atomic (a temporary
folder renamed into place), so an interrupted save never leaves a half-written checkpoint under the final name.
Loading checks the format, the config keys (unknown keys are an error listing the valid ones) and that the
weights match the model exactly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmdm.atomic import atomic_folder
from lmdm.audio.autoencoder import AutoencoderConfig, AutoencoderError, autoencoder_from_state
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.config import ConfigError, from_dict, read_json, to_dict
from lmdm.errors import LmdmError
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.text import ENCODER_ID

FORMAT = "lmdm-checkpoint"
VERSION = 2


class CheckpointError(LmdmError, RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or for another model; the message says which file."""


@dataclass
class Checkpoint:
    """A loaded inference checkpoint: the model (eval mode, float32, on the device it was loaded onto), its codec
    and free-form info. The codec holds the mel settings (``codec.cfg``, the :class:`CodecConfig`) and, for a
    learned latent, the frozen autoencoder; it always stays on the CPU, where decoding runs."""

    model: DiT
    codec: MelCodec
    info: dict = field(default_factory=dict)
    path: Path | None = None


def repo_root() -> Path:
    """The source checkout this package lives in (where ``data/`` is)."""
    return Path(__file__).resolve().parent.parent


def default_checkpoint() -> Path:
    """The bundled checkpoint: ``$LMDM_CHECKPOINT`` if set, else ``data/checkpoints/lmdm-small`` of the checkout."""
    env = os.environ.get("LMDM_CHECKPOINT")
    return Path(env) if env else repo_root() / "data" / "checkpoints" / "lmdm-small"


def save_checkpoint(path: str | Path, model: DiT, codec: MelCodec, info: dict | None = None,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write an inference checkpoint folder atomically.

    Args:
        path: destination folder (replaced if it exists).
        model: the DiT whose weights are stored.
        codec: the codec the model was trained with (its autoencoder, if any, is stored beside it in float16:
            loading upcasts to float32; the rounding moves a decoded log-mel by about 1e-3 of its std, far below
            the autoencoder's own reconstruction error, and keeps a bundled checkpoint under 40 MB).
        info: JSON-serialisable extras (training step, data hours, validation loss...).
        dtype: storage dtype of the DiT's floating-point weights (bf16 halves the size; loading upcasts to float32).

    Raises:
        ValueError: the model's ``latent_channels`` differ from the codec's.
    """
    from safetensors.torch import save_file

    if model.cfg.latent_channels != codec.channels:
        raise ValueError(f"the model diffuses {model.cfg.latent_channels} channels, the codec's latent has "
                         f"{codec.channels}")
    path = Path(path)
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.state_dict().items()}
    ae = codec.autoencoder
    meta = {"format": FORMAT, "version": VERSION, "model": to_dict(model.cfg), "codec": to_dict(codec.cfg),
            "autoencoder": None if ae is None else to_dict(ae.cfg), "text_encoder": ENCODER_ID, "info": info or {}}
    with atomic_folder(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        if ae is not None:
            save_file({k: v.detach().to(torch.float16).contiguous().cpu() for k, v in ae.state_dict().items()},
                      str(tmp / "autoencoder.safetensors"), metadata={"format": FORMAT})
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
    if meta.get("version") == 1:
        raise CheckpointError(f"{path} is a version 1 checkpoint, from before lmdm's learned latent: it does not "
                              f"record which latent it diffuses, and this lmdm reads only version {VERSION} "
                              f"checkpoints, which carry their codec; use the bundled data/checkpoints/lmdm-small "
                              f"or retrain with `lmdm train`")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{cfg_file}: checkpoint version {meta.get('version')!r} is not supported "
                              f"(this lmdm reads version {VERSION})")
    valid = {"format", "version", "model", "codec", "autoencoder", "text_encoder", "info"}
    unknown = sorted(set(meta) - valid)
    if unknown:
        raise CheckpointError(f"{cfg_file}: unknown key(s) {unknown}; valid keys are: {', '.join(sorted(valid))}")
    return meta


def load_checkpoint(path: str | Path | None = None, device: str | torch.device | None = None) -> Checkpoint:
    """Load an inference checkpoint folder (default: :func:`default_checkpoint`).

    Args:
        path: the checkpoint folder.
        device: where the model goes ("auto", "cpu", "cuda", "mps" or a ``torch.device``); None:
            :func:`lmdm.device.default_device` (the CPU unless ``--device`` set it).

    Raises:
        CheckpointError: missing or corrupt files, an invalid config, or weights that do not fit the model.
        UsageError: ``device`` is unknown or not available here.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lmdm.device import default_device, resolve_device

    device = default_device() if device is None else resolve_device(device)

    path = Path(path) if path is not None else default_checkpoint()
    meta = read_config(path)
    try:
        model_cfg = from_dict(DiTConfig, meta["model"], where=f"{path}/config.json:model")
        codec_cfg = from_dict(CodecConfig, meta["codec"], where=f"{path}/config.json:codec")
        ae_cfg = (None if meta.get("autoencoder") is None else
                  from_dict(AutoencoderConfig, meta["autoencoder"], where=f"{path}/config.json:autoencoder"))
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
    model.eval().requires_grad_(False).to(device)
    autoencoder = None
    if ae_cfg is not None:
        ae_file = path / "autoencoder.safetensors"
        try:
            autoencoder = autoencoder_from_state(ae_cfg, load_file(str(ae_file)), str(ae_file))
        except (SafetensorError, OSError, ValueError, AutoencoderError) as e:
            raise CheckpointError(f"{ae_file} is missing or does not fit config.json ({str(e)[:300]})") from e
    try:
        codec = MelCodec(codec_cfg, autoencoder)
    except ValueError as e:
        raise CheckpointError(f"invalid codec in {path}: {e}") from e
    if model_cfg.latent_channels != codec.channels:
        raise CheckpointError(f"{path}: the model diffuses {model_cfg.latent_channels} channels but its codec's "
                              f"latent has {codec.channels}")
    return Checkpoint(model=model, codec=codec, info=meta.get("info", {}), path=path)
