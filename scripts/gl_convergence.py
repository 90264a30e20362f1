"""Spectral convergence of Griffin-Lim by iterations and starting phase, on real music encoded with the bundled codec.

The eval suite (``lmdm eval --gl-iters N``) asks whether a listener's lenses change with the decoder setting; this
asks how closely the decoded audio's STFT magnitude matches the magnitude Griffin-Lim was given:
``||  |STFT(y)| - M || / || M ||`` (Sturmel & Daudet 2011, "Signal reconstruction from STFT magnitude: a state of
the art"), lower is better, over ``--n`` ten-second windows of the built data set (every k-th file), for each
starting phase (``lmdm.audio.griffinlim``: "random", the classic start, and "gradient", integrated from the
magnitude) and two ways of decoding: the window whole (``codec.decode``) and block by block as ``lmdm generate``
streams it (``StreamingDecoder``, 1.024 s blocks, each continuing the previous block's phase).

    .venv/bin/python scripts/gl_convergence.py [--data data/music] [--n 12] [--iters 4 8 16 32 64]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lmdm.audio.decoder import StreamingDecoder, decode_in_blocks
from lmdm.audio.griffinlim import PHASE_INITS, stft
from lmdm.audio.io import load_audio
from lmdm.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/music")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--iters", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    args = ap.parse_args()
    files = sorted(Path(args.data, "audio").glob("*"))
    if not files:
        raise SystemExit(f"no audio under {args.data}/audio: build the data set with `lmdm data build`")
    files = files[:: max(1, len(files) // args.n)][: args.n]
    ckpt = load_checkpoint()
    c0 = ckpt.codec.cfg
    block = ckpt.model.cfg.block_frames
    window = torch.hann_window(c0.n_fft)
    latents = [torch.as_tensor(ckpt.codec.encode_numpy(load_audio(f, c0.sample_rate)[: 10 * c0.sample_rate])).float()
               for f in files]
    print(f"{len(latents)} windows of 10 s; spectral convergence, mean (sd); decode seconds per second of audio, "
          f"{torch.get_num_threads()} threads")
    for init in PHASE_INITS:
        codec = ckpt.codec.with_decoding(gl_init=init)
        for it in args.iters:
            row = []
            for mode in ("whole", "streamed"):
                sc, spent, seconds = [], 0.0, 0.0
                for i, lat in enumerate(latents):
                    target = codec.mel_to_magnitude(codec.latent_to_mel(lat[None], None))  # (1, bins, frames)
                    t = time.perf_counter()
                    if mode == "whole":
                        y = codec.decode(lat[None], generator=torch.Generator().manual_seed(i), n_iter=it)
                    else:
                        decoder = StreamingDecoder(codec, seed=i, gl_iters=it)
                        y = torch.as_tensor(decode_in_blocks(decoder, lat, block))[None]
                    spent += time.perf_counter() - t
                    seconds += y.shape[-1] / c0.sample_rate
                    got = stft(y, c0.n_fft, c0.hop, window).abs()
                    n = min(got.shape[-1], target.shape[-1])
                    sc.append(float((got[..., :n] - target[..., :n]).norm() / target[..., :n].norm()))
                row.append(f"{mode} {np.mean(sc):.3f} ({np.std(sc):.3f}), RTF {spent / seconds:.4f}")
            print(f"{init:8s} {it:3d} iterations: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
