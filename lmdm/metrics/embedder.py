"""A small audio classifier on latent frames, trained on the corpus labels, whose penultimate layer is the
embedding for Fréchet distances.

No pretrained audio embedding (VGGish, CLAP, ...) can be downloaded here, so ``lmdm metrics train-embedder``
trains this one on the built data set: a dilated 1-D convolutional network over 4-second crops of latent frames
that predicts the collection (Bach chorale, Irish dance tune, ...) and the instrument. **What it measures**:
timbre and texture at the level those labels separate (instrument family, polyphony, register, rhythmic
density) — not melody, harmony or long-range structure. Its validation accuracy is stored with it and printed
with every drift report.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmdm.checkpoint import repo_root
from lmdm.audio.codec import CodecConfig
from lmdm.config import from_dict


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
    """Write ``model.safetensors`` + ``config.json`` (architecture, labels, codec, validation accuracy)."""
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"embedder": asdict(model.cfg), "codec": asdict(codec),
                                                 "metrics": metrics}, indent=1))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def load_embedder(path: str | Path | None = None) -> tuple[Embedder, dict]:
    """Load an embedder; returns ``(model in eval mode, metrics dict)`` (the reference statistics of real music
    are in ``reference.npz`` beside it: ``lmdm.metrics.drift.load_reference``).

    Raises:
        FileNotFoundError: no embedder at ``path`` (build one with ``lmdm metrics train-embedder``).
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_embedder_path()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no embedder at {path}; train one with `lmdm metrics train-embedder`")
    meta = json.loads((path / "config.json").read_text())
    model = Embedder(from_dict(EmbedderConfig, meta["embedder"], where=str(path / "config.json")))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval().requires_grad_(False), meta.get("metrics", {})


def train_embedder(data_dir: str | Path, out: str | Path | None = None, cfg: EmbedderConfig = EmbedderConfig(),
                   codec: CodecConfig = CodecConfig(), progress: bool = True) -> dict:
    """Train the embedder on a built data set's train split; report accuracy on its validation split.

    Returns:
        ``{"val_collection_accuracy", "val_instrument_accuracy", "chance_collection", "chance_instrument", ...}``.
    """
    from dataclasses import replace

    from tqdm.auto import tqdm

    from lmdm.train.dataset import load_latent_set, read_manifest

    rows = read_manifest(data_dir)
    data = load_latent_set(data_dir, codec, progress=progress)
    colls = tuple(sorted({r["collection"] for r in rows}))
    insts = tuple(sorted({r["instrument"] for r in rows}))
    cfg = replace(cfg, collections=colls, instruments=insts, latent_channels=codec.channels)
    coll_of = torch.tensor([colls.index(r["collection"]) for r in rows])
    inst_of = torch.tensor([insts.index(r["instrument"]) for r in rows])
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = Embedder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    train_starts = data.valid_starts("train", cfg.crop_frames)

    def batch(starts, n, gen):
        idx = starts[torch.randint(len(starts), (n,), generator=gen)]
        x = data.latents[idx[:, None] + torch.arange(cfg.crop_frames)].float()
        w = data.frame_work[idx].long()
        return x, coll_of[w], inst_of[w]

    for step in tqdm(range(cfg.steps), desc="training embedder", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        x, yc, yi = batch(train_starts, cfg.batch_size, g)
        _, lc, li = model(x)
        loss = F.cross_entropy(lc, yc) + F.cross_entropy(li, yi)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    val_starts = data.valid_starts("val", cfg.crop_frames)
    gv = torch.Generator().manual_seed(cfg.seed + 1)
    hit_c = hit_i = total = 0
    with torch.no_grad():
        for _ in range(20):
            x, yc, yi = batch(val_starts, 64, gv)
            _, lc, li = model(x)
            hit_c += int((lc.argmax(1) == yc).sum())
            hit_i += int((li.argmax(1) == yi).sum())
            total += len(yc)
    val_rows = [r for r in rows if r["split"] == "val"]
    metrics = {"val_collection_accuracy": hit_c / total, "val_instrument_accuracy": hit_i / total,
               "chance_collection": max(sum(r["collection"] == c for r in val_rows) for c in colls) / len(val_rows),
               "chance_instrument": max(sum(r["instrument"] == i for r in val_rows) for i in insts) / len(val_rows),
               "val_examples": total, "train_steps": cfg.steps}
    path = save_embedder(out or default_embedder_path(), model, codec, metrics)
    from lmdm.metrics.drift import real_music_levels, reference_stats, save_reference

    ref = reference_stats(data_dir, codec, model)
    save_reference(path / "reference.npz", ref)
    metrics["real_music"] = real_music_levels(data_dir, codec, model, ref)
    save_embedder(path, model, codec, metrics)
    save_reference(path / "reference.npz", ref)
    return metrics

