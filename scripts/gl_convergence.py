"""Spectral convergence of Griffin-Lim at a few iteration counts, on real music encoded with the bundled codec.

The eval suite (``lmdm eval --gl-iters N``) asks whether a listener's lenses change with the decoder setting; this
asks how closely the decoded audio's STFT magnitude matches the magnitude Griffin-Lim was given:
``||  |STFT(y)| - M || / || M ||`` (Sturmel & Daudet 2011, "Signal reconstruction from STFT magnitude: a state of
the art"), lower is better, over ``--n`` ten-second windows of the built data set (every k-th file, seed 0).

    .venv/bin/python scripts/gl_convergence.py [--data data/music] [--n 12] [--iters 8 16 32 64]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lmdm.audio.griffinlim import griffin_lim, stft
from lmdm.audio.io import load_audio
from lmdm.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/music")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--iters", type=int, nargs="+", default=[8, 16, 32, 64])
    args = ap.parse_args()
    files = sorted(Path(args.data, "audio").glob("*"))
    if not files:
        raise SystemExit(f"no audio under {args.data}/audio: build the data set with `lmdm data build`")
    files = files[:: max(1, len(files) // args.n)][: args.n]
    codec = load_checkpoint().codec
    c = codec.cfg
    window = torch.hann_window(c.n_fft)
    sc: dict[int, list[float]] = {it: [] for it in args.iters}
    for f in files:
        audio = load_audio(f, c.sample_rate)[: 10 * c.sample_rate]
        latent = torch.as_tensor(codec.encode_numpy(audio)).float()
        target = codec.mel_to_magnitude(codec.latent_to_mel(latent[None], None))  # (1, bins, frames)
        for it in args.iters:
            y = griffin_lim(target, c.n_fft, c.hop, it, c.gl_momentum, generator=torch.Generator().manual_seed(0))
            got = stft(y, c.n_fft, c.hop, window).abs()[..., : target.shape[-1]]
            ref = target[..., : got.shape[-1]]
            sc[it].append(float((got - ref).norm() / ref.norm()))
    for it, v in sc.items():
        print(f"Griffin-Lim {it:3d} iterations: spectral convergence {np.mean(v):.3f} (sd {np.std(v):.3f}, "
              f"n {len(v)} windows of 10 s) = {20 * np.log10(np.mean(v)):.1f} dB")


if __name__ == "__main__":
    main()
