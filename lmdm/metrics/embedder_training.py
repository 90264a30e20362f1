"""``lmdm metrics train-embedder``: train the drift metrics' embedder on a built data set and store it with the
statistics of real music (its validation split) that drift is measured against."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmdm.audio.codec import CodecConfig
from lmdm.metrics.embedder import Embedder, EmbedderConfig, default_embedder_path, save_embedder
from lmdm.metrics.reference import real_music_levels, reference_stats
from lmdm.train.dataset import load_latent_set, read_manifest


def train_embedder(data_dir: str | Path, out: str | Path | None = None, cfg: EmbedderConfig = EmbedderConfig(),
                   codec: CodecConfig = CodecConfig(), progress: bool = True) -> dict:
    """Train the embedder on a built data set's train split; report accuracy on its validation split.

    The model, its metrics and the reference statistics of the validation split are written together, atomically,
    to ``out`` (default: the bundled ``data/checkpoints/embedder``).

    Args:
        data_dir: a folder built by ``lmdm data build``.
        out: the embedder folder to write.
        cfg: architecture and training (labels and input channels are filled from the data set and ``codec``).
        codec: the mel codec of the latents.

    Returns:
        ``{"val_collection_accuracy", "val_instrument_accuracy", "chance_collection", "chance_instrument",
        "val_examples", "train_steps", "real_music"}`` (accuracies in [0, 1]; ``real_music``: mean, std and
        number of windows of every drift metric on the validation split).

    Raises:
        DataError: ``data_dir`` is not a usable data set (no manifest, no validation works).
    """
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
    ref = reference_stats(data_dir, codec, model)
    metrics["real_music"] = real_music_levels(data_dir, codec, model, ref)
    save_embedder(out or default_embedder_path(), model, codec, metrics, reference=ref)
    return metrics

