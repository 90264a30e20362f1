"""Statistics of real music that drift windows are compared against (the "reference").

A reference is computed from a built data set's validation split with one embedder: the Gaussian of its crop
embeddings (for the Fréchet distance) and the per-band mean and spread of its log-mel frames (for the mel
distance). ``lmdm metrics train-embedder`` stores one as ``reference.npz`` beside the embedder (cached in
``DATA/cache/``). ``lmdm drift`` no longer reads it: it measures decoded audio against real audio windows
(``lmdm.metrics.report``); see ``lmdm.metrics.drift`` for what removing this stack would take.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmdm.atomic import atomic_file, write_text
from lmdm.audio.codec import CodecConfig
from lmdm.metrics.drift import METRICS, crop_embeddings, gaussian, mel_frames, window_metrics
from lmdm.metrics.embedder import Embedder, EmbedderError
from lmdm.train.dataset import DataError, LatentSet, load_latent_set


@dataclass
class Reference:
    """Statistics of real music (a validation split) that windows are compared against.

    Attributes:
        mu, sigma: mean ``(embed_dim,)`` and covariance ``(embed_dim, embed_dim)`` of crop embeddings.
        mel_mean, mel_std: per-band mean and standard deviation ``(n_mels,)`` of normalised log-mel frames.
    """

    mu: np.ndarray
    sigma: np.ndarray
    mel_mean: np.ndarray
    mel_std: np.ndarray

    def save(self, path: str | Path) -> Path:
        """Write the four arrays to the ``.npz`` file ``path`` atomically; returns ``path``."""
        with atomic_file(path) as tmp:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, mel_mean=self.mel_mean, mel_std=self.mel_std)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a reference written by :meth:`save` (e.g. ``reference.npz`` beside an embedder).

        Raises:
            EmbedderError: no readable reference at ``path`` (retrain with ``lmdm metrics train-embedder``).
        """
        try:
            z = np.load(path)
        except (OSError, ValueError) as e:
            raise EmbedderError(f"no readable reference statistics at {path} ({e}); rebuild them with "
                                "`lmdm metrics train-embedder`") from e
        return cls(z["mu"], z["sigma"], z["mel_mean"], z["mel_std"])


def _cache_key(data: LatentSet, split: str, embedder: Embedder) -> str:
    return hashlib.sha256(json.dumps([data.work_ids, split, [p.sum().item() for p in embedder.parameters()]],
                                     sort_keys=True).encode()).hexdigest()[:16]


def _split_works(data: LatentSet, split: str, data_dir: str | Path):
    works = [(s, n) for s, n, sp in zip(data.work_start.tolist(), data.work_frames.tolist(), data.splits) if sp == split]
    if not works:
        raise DataError(f"{data_dir} has no {split!r} works to compute the real-music reference from")
    return works


def reference_stats(data_dir: str | Path, codec: CodecConfig, embedder: Embedder, split: str = "val") -> Reference:
    """Reference statistics of a data set split (cached in ``DATA/cache/reference-<hash>.npz``; the hash covers
    the works, the split and the embedder's weights).

    Raises:
        DataError: ``data_dir`` is not a built data set, or has no work in ``split``.
    """
    data = load_latent_set(data_dir, codec, progress=False)
    cache = Path(data_dir) / "cache" / f"reference-{_cache_key(data, split, embedder)}.npz"
    if cache.is_file():
        return Reference.load(cache)
    embs, mels = [], []
    for s, n in _split_works(data, split, data_dir):
        lat = data.latents[s : s + n].float()
        embs.append(crop_embeddings(lat, embedder, hop=8))
        mels.append(mel_frames(lat, codec))
    mu, sigma = gaussian(np.concatenate(embs))
    allmel = np.concatenate(mels)
    ref = Reference(mu, sigma, allmel.mean(0), allmel.std(0))
    cache.parent.mkdir(parents=True, exist_ok=True)
    ref.save(cache)
    return ref


def real_music_levels(data_dir: str | Path, codec: CodecConfig, embedder: Embedder, ref: Reference,
                      window_s: float = 30.0, split: str = "val") -> dict:
    """Mean and standard deviation of every metric over windows of real validation music: the level a stream
    that does not drift should stay at. Cached in ``DATA/cache/real-music-<hash>-<window>.json``.

    Returns:
        ``{metric: {"mean", "std", "windows"}}`` for every metric in ``lmdm.metrics.drift.METRICS``; empty when
        no validation work is as long as one window.

    Raises:
        DataError: ``data_dir`` is not a built data set, or has no work in ``split``.
    """
    data = load_latent_set(data_dir, codec, progress=False)
    ref_key = hashlib.sha256(np.concatenate([ref.mu.ravel(), ref.mel_mean.ravel()]).tobytes()).hexdigest()[:8]
    cache = Path(data_dir) / "cache" / f"real-music-{_cache_key(data, split, embedder)}-{ref_key}-{window_s:g}s.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    rows = []
    for s, n in _split_works(data, split, data_dir):
        rows += window_metrics(data.latents[s : s + n].float(), codec, embedder, ref, window_s)
    if not rows:
        return {}
    levels = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows])),
                  "windows": len(rows)} for k in METRICS}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_text(cache, json.dumps(levels))
    return levels
