"""Diagnose a checkpoint's velocity field on held-out data (issue "music like its data", step 1).

Teacher-forced x0 predictions on validation crops, per timestep t (the block-causal training layout, clean context,
prompt on, controls off), against the real latents:

* ``energy``: E|x0_hat|^2 / E|x0|^2 in the mel domain (decoded patches, normalised log-mel around the data mean):
  above 1 means the prediction carries more variance than music (what Euler then integrates into loudness);
* ``band_bias``: mean over bands of |mean(x0_hat) - mean(x0)| per mel band, normalised log-mel units;
* ``mse``: mean squared x0 error in the mel domain;
* ``noise_in_x0``: least-squares coefficient of the noise eps in the x0 error (x0_hat - x0 = c eps + rest): a model
  that cannot see part of the noise leaves ``t * eps`` of it in its prediction there (c near t), a sound one
  removes it (c near 0).

Usage: ``.venv/bin/python scripts/velocity_field.py CHECKPOINT [CHECKPOINT ...] [--data data/music]``
"""
from __future__ import annotations

import argparse

import torch

from lmdm.checkpoint import load_checkpoint
from lmdm.diffusion import add_noise, x0_from_velocity
from lmdm.model.layouts import teacher_forcing_tokens
from lmdm.train.dataset import encode_latent_set, load_latent_set

TS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0)


@torch.no_grad()
def diagnose(path: str, data_dir: str, crops: int = 48, chunks: int = 6, seed: int = 0) -> list[dict]:
    ckpt = load_checkpoint(path)
    model, codec = ckpt.model, ckpt.codec
    data = encode_latent_set(load_latent_set(data_dir, codec.cfg, progress=False), codec)
    B, W = model.cfg.block_frames, model.cfg.window_chunks
    g = torch.Generator().manual_seed(seed)
    starts = data.valid_starts("val", chunks * B)
    x0, _, text = data.sample(starts, crops, chunks * B, g)
    eps = torch.randn(x0.shape, generator=g)
    mel = lambda z: codec.latent_to_patches(z).reshape(len(z), -1, codec.cfg.n_mels)
    real = mel(x0)
    mu = real.mean((0, 1), keepdim=True)
    rows = []
    for t_val in TS:
        t = torch.full((crops, chunks), t_val)
        x_t = add_noise(x0, eps, t.repeat_interleave(B, 1))
        tok = teacher_forcing_tokens(x0, x_t, t, W, None, None)
        v = model(tok, text, torch.ones(crops, dtype=torch.bool))[:, x0.shape[1]:]
        x0_hat = x0_from_velocity(x_t, v, t.repeat_interleave(B, 1))
        err = x0_hat - x0
        c = float((err * eps).sum() / (eps * eps).sum())
        pred = mel(x0_hat)
        rows.append({"t": t_val, "energy": float(((pred - mu) ** 2).mean() / ((real - mu) ** 2).mean()),
                     "band_bias": float((pred.mean((0, 1)) - real.mean((0, 1))).abs().mean()),
                     "mse": float(((pred - real) ** 2).mean()), "noise_in_x0": c})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default="data/music")
    args = p.parse_args()
    for path in args.checkpoints:
        print(path)
        print(f"{'t':>5} {'energy':>7} {'band_bias':>9} {'mse':>7} {'noise_in_x0':>11}")
        for r in diagnose(path, args.data):
            print(f"{r['t']:5.2f} {r['energy']:7.3f} {r['band_bias']:9.4f} {r['mse']:7.4f} {r['noise_in_x0']:11.3f}")


if __name__ == "__main__":
    main()
