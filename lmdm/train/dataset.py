"""Training crops from a built data set: latents, control features and caption embeddings, all in memory.

The cache holds mel patches (the raw-mel latent, ``patch * n_mels`` numbers per frame); a model that diffuses a
learned latent encodes them once at the start of a run (:func:`encode_latent_set`).

The first use of a data folder with a given codec computes every work's latent frames (``MelCodec.encode``),
control features (``lmdm.control.features``: melody and onsets from the rendered MIDI, loudness from the audio) and the
embeddings of its caption variants, and stores them in ``DATA/cache/latents-<hash>.safetensors``; later runs load
that file in seconds. The hash covers the codec config and the manifest rows, so a changed codec or a grown
data set is recomputed rather than silently mixed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmdm.atomic import atomic_file, write_text
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.audio.io import load_audio
from lmdm.config import to_dict
from lmdm.control.features import loudness_feature, midi_notes, notes_features
from lmdm.data.captions import caption_variants
from lmdm.errors import LmdmError


class DataError(LmdmError, RuntimeError):
    """A data folder that cannot be used for training; the message says what to run."""


@dataclass
class LatentSet:
    """All works of a data set, concatenated.

    Attributes:
        latents: ``(total_frames, channels)`` float16 latent frames of every work, back to back.
        features: ``(total_frames, 4)`` float16 control features (pitch, voiced, onset, loudness).
        frame_work: ``(total_frames,)`` int32 work index of each frame.
        work_start, work_frames: ``(n_works,)`` int64 first frame and length of each work.
        captions: ``(n_captions, 384)`` float32 caption embeddings.
        caption_start, caption_count: ``(n_works,)`` int64 range of each work's captions.
        work_ids, splits: per work.
        texts: every caption text (aligned with ``captions``).
    """

    latents: torch.Tensor
    features: torch.Tensor
    frame_work: torch.Tensor
    work_start: torch.Tensor
    work_frames: torch.Tensor
    captions: torch.Tensor
    caption_start: torch.Tensor
    caption_count: torch.Tensor
    work_ids: list[str]
    splits: list[str]
    texts: list[str]

    def valid_starts(self, split: str, frames: int) -> torch.Tensor:
        """Global frame indices where a crop of ``frames`` frames fits inside one work of ``split``.

        Raises:
            DataError: no work of the split is long enough.
        """
        return crop_starts(self.work_start, self.work_frames, self.splits, split, frames,
                           "latent frames", "train with fewer train_chunks")

    def draw(self, starts: torch.Tensor, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The random choices of a batch of crops: each crop's first frame and caption (one of its work's).

        Args:
            starts: allowed first frames (:meth:`valid_starts`).
            batch: crops in the whole batch.
            generator: the run's CPU generator.

        Returns:
            ``(first_frames, caption_rows)``, each ``(batch,)`` long: global frame indices and rows of
            ``captions``.
        """
        idx = starts[torch.randint(len(starts), (batch,), generator=generator, device=generator.device)]
        work = self.frame_work[idx].long()
        pick = (torch.rand(batch, generator=generator, device=generator.device) * self.caption_count[work]).long()
        return idx, self.caption_start[work] + pick

    def crops(self, first_frames: torch.Tensor, caption_rows: torch.Tensor, frames: int):
        """The crops of :meth:`draw`'s choices: ``x0 (r, frames, ch)`` float32, ``features (r, frames, 4)``
        float32, ``text (r, 384)``, for ``r`` crops."""
        frame_rows = first_frames[:, None] + torch.arange(frames, device=first_frames.device)
        return self.latents[frame_rows].float(), self.features[frame_rows].float(), self.captions[caption_rows]

    def sample(self, starts: torch.Tensor, batch: int, frames: int, generator: torch.Generator,
               rows: slice | None = None):
        """A batch of random crops (on the CPU): :meth:`draw`, then :meth:`crops`.

        Args:
            starts: allowed first frames (:meth:`valid_starts`).
            batch: crops in the whole batch (the random draws are always for all of them).
            frames: frames per crop.
            generator: the run's CPU generator.
            rows: read only these crops of the batch (one rank's share, ``lmdm.train.distributed``); None: all.

        Returns:
            ``x0 (r, frames, ch)`` float32, ``features (r, frames, 4)`` float32, ``text (r, 384)`` with ``r`` the
            number of rows read.
        """
        idx, caption_rows = self.draw(starts, batch, generator)
        if rows is not None:
            idx, caption_rows = idx[rows], caption_rows[rows]
        return self.crops(idx, caption_rows, frames)

    def caption_works(self) -> torch.Tensor:
        """``(n_captions,)`` long: the work index of each row of ``captions`` (-1 for a row no work names)."""
        out = torch.full((len(self.captions),), -1, dtype=torch.long)
        for w, (start, count) in enumerate(zip(self.caption_start.tolist(), self.caption_count.tolist())):
            out[start : start + count] = w
        return out


def _fingerprint(codec: CodecConfig, manifest_rows: list[dict]) -> str:
    keys = [(r["work_id"], r["seconds"], r["caption"], r["split"]) for r in manifest_rows]
    blob = json.dumps({"codec": to_dict(codec), "rows": keys, "v": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def crop_starts(work_start: torch.Tensor, work_frames: torch.Tensor, splits: list[str], split: str, frames: int,
                unit: str, hint: str) -> torch.Tensor:
    """Global frame indices where a crop of ``frames`` frames fits inside one work of ``split``.

    Args:
        work_start, work_frames: ``(n_works,)`` each work's first global frame and length in frames.
        splits: each work's split.
        unit, hint: words for the error (the frames' kind; what else the user can change).

    Raises:
        DataError: no work of the split is long enough.
    """
    parts = [torch.arange(s, s + n - frames + 1, device=work_start.device) for s, n, sp in
             zip(work_start.tolist(), work_frames.tolist(), splits) if sp == split and n >= frames]
    if not parts:
        raise DataError(f"no {split!r} work has {frames} {unit} or more; build more data "
                        f"(lmdm data build --hours H) or {hint}")
    return torch.cat(parts)


def read_manifest(data_dir: str | Path) -> list[dict]:
    """Rows of ``manifest.csv`` as dicts.

    Raises:
        DataError: the folder has no manifest (the message says how to build one).
    """
    import pandas as pd

    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise DataError(f"no data set at {data_dir}: {path.name} is missing; build one with "
                        f"`lmdm data build --out {data_dir}`")
    df = pd.read_csv(path, keep_default_na=False)
    if df.empty:
        raise DataError(f"{path} lists no works; run `lmdm data build --out {data_dir}`")
    return df.to_dict("records")


def load_latent_set(data_dir: str | Path, codec_cfg: CodecConfig, progress: bool = True) -> LatentSet:
    """Load (computing and caching on first use) the :class:`LatentSet` of a data folder.

    The cache ``DATA/cache/latents-<hash>.safetensors`` (and its ``.json`` of names and captions) is written
    atomically (``lmdm.atomic``), so an interrupted first run leaves no half-written cache.

    Raises:
        DataError: the folder has no manifest, or it lists no works.
    """
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    cache = data_dir / "cache" / f"latents-{_fingerprint(codec_cfg, rows)}.safetensors"
    if cache.is_file():
        t = load_file(str(cache))
        meta = json.loads((cache.with_suffix(".json")).read_text())
        return LatentSet(latents=t["latents"], features=t["features"], frame_work=t["frame_work"],
                         work_start=t["work_start"], work_frames=t["work_frames"], captions=t["captions"],
                         caption_start=t["caption_start"], caption_count=t["caption_count"],
                         work_ids=meta["work_ids"], splits=meta["splits"], texts=meta["texts"])
    from lmdm.text import embed_texts

    codec = MelCodec(codec_cfg)
    lat, feats, texts, cap_start, cap_count, starts, lengths = [], [], [], [], [], [], []
    total = 0
    for r in tqdm(rows, desc="encoding latents", unit="work", disable=not progress):
        audio = load_audio(data_dir / r["audio"], codec_cfg.sample_rate)
        z = codec.encode_numpy(audio)
        n = z.shape[0]
        f = np.zeros((n, 4), dtype=np.float32)
        midi = data_dir / str(r.get("midi", ""))
        if midi.is_file():
            f[:, :3] = notes_features(midi_notes(str(midi)), codec_cfg.frame_rate, n)
        f[:, 3] = loudness_feature(audio, codec_cfg.samples_per_frame, n)
        lat.append(z.half())
        feats.append(torch.from_numpy(f).half())
        variants = caption_variants(r)
        cap_start.append(len(texts))
        cap_count.append(len(variants))
        texts.extend(variants)
        starts.append(total)
        lengths.append(n)
        total += n
    captions = torch.from_numpy(embed_texts(texts))
    frame_work = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])
    tensors = {
        "latents": torch.cat(lat), "features": torch.cat(feats), "frame_work": frame_work,
        "work_start": torch.tensor(starts), "work_frames": torch.tensor(lengths), "captions": captions,
        "caption_start": torch.tensor(cap_start), "caption_count": torch.tensor(cap_count),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta = {"work_ids": [r["work_id"] for r in rows], "splits": [r["split"] for r in rows], "texts": texts}
    write_text(cache.with_suffix(".json"), json.dumps(meta))  # first: the tensors file marks the cache complete
    with atomic_file(cache) as tmp:
        save_file(tensors, str(tmp))
    return LatentSet(**tensors, work_ids=meta["work_ids"], splits=meta["splits"], texts=texts)


def encode_latent_set(data: LatentSet, codec: MelCodec, batch: int = 65536) -> LatentSet:
    """``data`` with its mel patches ``(frames, patch * n_mels)`` replaced by the codec's latent frames
    ``(frames, channels)`` (float16, like the cache); the same object without an autoencoder."""
    if codec.autoencoder is None:
        return data
    z = torch.cat([codec.patches_to_latent(data.latents[i : i + batch].float()).half()
                   for i in range(0, len(data.latents), batch)])
    return dataclasses.replace(data, latents=z)
