"""Drift over time: how far each window of a long stream is from real music (DESIGN.md section 1, error
accumulation; LMDM, arXiv 2605.22717, section 4).

Per time window of a stream's latent frames:

* ``fd`` — Fréchet distance (Heusel et al. 2017, eq. 6) between the window's crop embeddings and the validation
  set's, in the space of ``lmdm.metrics.embedder`` (timbre and texture; see its docstring);
* ``loudness_db`` — mean mel energy in dB (relative);
* ``flatness`` — spectral flatness of the mel spectrum (geometric / arithmetic mean; 1 = white noise, near 0 =
  tones);
* ``mel_distance`` — distance of the window's per-band log-mel mean and spread from the validation set's, in
  validation standard deviations;
* ``pc_entropy`` — entropy (bits, at most log2 12 = 3.58) of the window's pitch-class distribution: chroma of
  each frame normalised to its maximum and raised to the 4th power (so the dominant pitch classes count, not the
  smear of a mel spectrum), summed over the window. Music in a key is well below the maximum (2.3-2.9 on the
  data set), noise is at it.

The reference statistics these are measured against are in ``lmdm.metrics.reference``.

``lmdm drift`` no longer uses these latent metrics: it measures decoded audio with the lenses of ``lmdm.eval``
(``lmdm.metrics.report``). They remain only for the summary ``lmdm metrics train-embedder`` stores beside the
embedder (``reference.npz`` and ``real_music`` in its metrics), which nothing reads any more; removing that
export (``embedder_training.export_info``, ``save_embedder(reference=...)``) would let this module and
``reference`` go.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.metrics.embedder import Embedder

if TYPE_CHECKING:
    from lmdm.metrics.reference import Reference

METRICS = ("fd", "loudness_db", "flatness", "mel_distance", "pc_entropy")


def crop_embeddings(latents: torch.Tensor, embedder: Embedder, hop: int = 4) -> np.ndarray:
    """Embeddings of overlapping crops of ``latents`` ``(frames, channels)``: ``(n_crops, embed_dim)``."""
    crop = embedder.cfg.crop_frames
    if latents.shape[0] < crop:
        return np.zeros((0, embedder.cfg.embed_dim))
    starts = torch.arange(0, latents.shape[0] - crop + 1, hop)
    x = latents[starts[:, None] + torch.arange(crop)].float()
    with torch.no_grad():
        return torch.cat([embedder.embedding(x[i : i + 64]) for i in range(0, len(x), 64)]).double().numpy()


def gaussian(emb: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (regularised) covariance of embeddings ``(n, d)``."""
    mu = emb.mean(0)
    sigma = np.cov(emb, rowvar=False) if len(emb) > 1 else np.zeros((emb.shape[1], emb.shape[1]))
    return mu, sigma + eps * np.eye(len(mu))


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2))`` (Heusel et al. 2017, eq. 6)."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def mel_frames(latents: torch.Tensor, codec: CodecConfig) -> np.ndarray:
    """Normalised log-mel frames ``(mel_frames, n_mels)`` of latent frames ``(frames, channels)``."""
    return MelCodec(codec).latent_to_mel(latents[None].float())[0].numpy()


def spectral_stats(latents: torch.Tensor, codec: CodecConfig) -> dict:
    """Loudness (dB), flatness and pitch-class entropy (bits) of latent frames ``(frames, channels)``."""
    import librosa

    z = mel_frames(latents, codec)
    mag = np.exp(z * codec.std + codec.mean)  # mel magnitudes
    power = (mag**2).mean(1)
    loud = float(10 * np.log10(power.mean() + 1e-12))
    flat = float(np.mean(np.exp(np.log(mag + 1e-9).mean(1)) / (mag.mean(1) + 1e-9)))
    lin = MelCodec(codec).mel_to_magnitude(torch.from_numpy(z)[None])[0].numpy()
    chroma = librosa.feature.chroma_stft(S=lin**2, sr=codec.sample_rate, n_fft=codec.n_fft, norm=np.inf)
    pc = (chroma**4).sum(1)  # sharpened: each frame's dominant pitch classes count, the smear of a mel spectrum not
    p = pc / max(pc.sum(), 1e-12)
    entropy = float(-(p * np.log2(np.maximum(p, 1e-12))).sum())
    return {"loudness_db": loud, "flatness": flat, "pc_entropy": entropy}


def mel_distance(latents: torch.Tensor, codec: CodecConfig, ref_mean: np.ndarray, ref_std: np.ndarray) -> float:
    """Mean over mel bands of |window mean - reference mean| + |window spread - reference spread|, in reference
    standard deviations."""
    z = mel_frames(latents, codec)
    s = np.maximum(ref_std, 1e-3)
    return float(np.mean(np.abs(z.mean(0) - ref_mean) / s + np.abs(z.std(0) - ref_std) / s))


def window_metrics(latents: torch.Tensor, codec: CodecConfig, embedder: Embedder, ref: Reference,
                   window_s: float = 30.0) -> list[dict]:
    """All metrics per window of ``window_s`` seconds of a stream's latent frames ``(frames, channels)``; one
    dict per whole window (a stream shorter than one window gives ``[]``)."""
    win = max(embedder.cfg.crop_frames, int(round(window_s * codec.frame_rate)))
    rows = []
    for start in range(0, latents.shape[0] - win + 1, win):
        w = latents[start : start + win]
        mu, sigma = gaussian(crop_embeddings(w, embedder))
        rows.append({"start_s": start / codec.frame_rate, "end_s": (start + win) / codec.frame_rate,
                     "fd": frechet_distance(mu, sigma, ref.mu, ref.sigma),
                     "mel_distance": mel_distance(w, codec, ref.mel_mean, ref.mel_std), **spectral_stats(w, codec)})
    return rows


def compare(a: torch.Tensor, b: torch.Tensor, codec: CodecConfig, embedder: Embedder) -> dict:
    """Every metric as a distance between two stretches of latent frames (the test of the metrics: two halves
    of one recording are close, a recording and noise are far)."""
    ga, gb = gaussian(crop_embeddings(a, embedder)), gaussian(crop_embeddings(b, embedder))
    sa, sb = spectral_stats(a, codec), spectral_stats(b, codec)
    za = mel_frames(a, codec)  # ``a`` is the reference
    return {"fd": frechet_distance(*ga, *gb), "mel_distance": mel_distance(b, codec, za.mean(0), za.std(0)),
            **{k: abs(sa[k] - sb[k]) for k in sa}}
