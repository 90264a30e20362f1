"""A small audio classifier on latent frames, trained on the corpus labels, whose penultimate layer is the
embedding for Fréchet distances.

No pretrained audio embedding (VGGish, CLAP, ...) can be downloaded here, so ``lmdm metrics train-embedder``
trains this one on the built data set: a dilated 1-D convolutional network over 4-second crops of latent frames
that predicts the collection (Bach chorale, Irish dance tune, ...) and the instrument. **What it measures**:
timbre and texture at the level those labels separate (instrument family, polyphony, register, rhythmic
density) — not melody, harmony or long-range structure. Its validation accuracy is stored with it and printed
with every drift report. Training is in ``lmdm.metrics.embedder_training``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmdm.atomic import atomic_folder
from lmdm.audio.codec import CodecConfig
from lmdm.checkpoint import repo_root
from lmdm.config import ConfigError, from_dict, read_json
from lmdm.errors import LmdmError


class EmbedderError(LmdmError, FileNotFoundError):
    """No usable embedder at the given folder; the message says how to build one."""


@dataclass(frozen=True)
class EmbedderConfig:
    """Embedder architecture and training.

    Attributes:
        latent_channels: input channels (the codec's).
        width: convolution channels.
        embed_dim: penultimate (embedding) size.
        crop_frames: frames per example (64 = 4.1 s).
        collections, instruments: label vocabularies (filled from the data set).
        steps, batch_size, lr: training.
    """

    latent_channels: int = 512
    width: int = 128
    embed_dim: int = 64
    crop_frames: int = 64
    collections: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)!r}" for k in ("latent_channels", "embed_dim", "crop_frames", "steps",
                                                      "batch_size") if getattr(self, k) < 1]
        if self.width < 8 or self.width % 8:
            bad.append(f"width={self.width!r} (a positive multiple of 8, for GroupNorm(8))")
        if not self.lr > 0:
            bad.append(f"lr={self.lr!r}")
        if bad:
            raise ConfigError(f"invalid embedder settings: {', '.join(bad)} (sizes and steps must be >= 1, lr > 0)")


class Embedder(nn.Module):
    """Latent crops ``(b, frames, channels)`` -> embeddings ``(b, embed_dim)`` and class logits."""

    def __init__(self, cfg: EmbedderConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.convs = nn.ModuleList([
            nn.Conv1d(cfg.latent_channels, w, 3, padding=1),
            nn.Conv1d(w, w, 3, padding=2, dilation=2),
            nn.Conv1d(w, w, 3, padding=4, dilation=4),
            nn.Conv1d(w, w, 3, padding=8, dilation=8),
        ])
        self.norms = nn.ModuleList([nn.GroupNorm(8, w) for _ in self.convs])
        self.embed = nn.Linear(2 * w, cfg.embed_dim)
        self.collection_head = nn.Linear(cfg.embed_dim, max(1, len(cfg.collections)))
        self.instrument_head = nn.Linear(cfg.embed_dim, max(1, len(cfg.instruments)))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, frames, channels)`` -> ``(b, embed_dim)`` (the penultimate layer)."""
        h = x.transpose(1, 2)
        for conv, norm in zip(self.convs, self.norms):
            h = F.gelu(norm(conv(h))) + (h if h.shape[1] == conv.out_channels else 0)
        pooled = torch.cat([h.mean(-1), h.std(-1)], dim=1)
        return self.embed(pooled)

    def forward(self, x: torch.Tensor):
        """``(b, frames, channels)`` -> ``(embedding (b, embed_dim), collection logits, instrument logits)``."""
        e = self.embedding(x)
        z = F.gelu(e)
        return e, self.collection_head(z), self.instrument_head(z)


def default_embedder_path() -> Path:
    """The bundled embedder: ``data/checkpoints/embedder`` of the checkout."""
    return repo_root() / "data" / "checkpoints" / "embedder"


def save_embedder(path: str | Path, model: Embedder, codec: CodecConfig, metrics: dict) -> Path:
    """Write the embedder folder ``path`` atomically: ``model.safetensors``, ``config.json`` (architecture,
    labels, codec, ``metrics``).

    The folder is written beside ``path`` and renamed into place (``lmdm.atomic.atomic_folder``), so a failure
    at any point leaves the previous embedder complete and loadable.

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_folder(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"embedder": asdict(model.cfg), "codec": asdict(codec),
                                                     "metrics": metrics}, indent=1))
    return path


def load_embedder(path: str | Path | None = None) -> tuple[Embedder, dict]:
    """Load an embedder; returns ``(model in eval mode, metrics dict)``.

    Args:
        path: the embedder folder (default: :func:`default_embedder_path`).

    Raises:
        EmbedderError: no embedder at ``path`` (build one with ``lmdm metrics train-embedder``).
        ConfigError: its ``config.json`` does not describe an :class:`EmbedderConfig`.
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_embedder_path()
    if not (path / "config.json").is_file():
        raise EmbedderError(f"no embedder at {path}; train one with `lmdm metrics train-embedder`")
    meta = read_json(path / "config.json", EmbedderError, "embedder config")
    if not isinstance(meta, dict) or "embedder" not in meta:
        raise EmbedderError(f"{path / 'config.json'} is not an embedder config (no 'embedder' entry)")
    model = Embedder(from_dict(EmbedderConfig, meta["embedder"], where=str(path / "config.json")))
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")))
    except (OSError, RuntimeError, ValueError) as e:  # missing, corrupt, or for another embedder
        raise EmbedderError(f"{path / 'model.safetensors'} cannot be loaded ({str(e)[:300]}); retrain with "
                            "`lmdm metrics train-embedder`") from e
    return model.eval().requires_grad_(False), meta.get("metrics", {})
