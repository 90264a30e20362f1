"""Where long streams clip, in the units ARC-Forcing's momentary ceiling uses (``lmdm.train.arc.level``).

For the training split of a data set: the 0.4 s level (``momentary_level``: total mel power over 0.4 s, in the
codec's normalised log-mel units; 1 unit = 21.7 dB) of every window, decoded through the checkpoint's latent, at the
median, 99th and 99.9th percentiles and the loudest. For each stream (a prompt and seeds, streamed and decoded as
``lmdm drift-study`` does): the same percentiles, its clipped samples (at or above 0.999 full scale) and the 0.4 s
level of the windows that hold them.

    python scripts/clip_levels.py data/checkpoints/lmdm-small-arc --steps 4 --cfg 1 --seconds 240 --seeds 1 2

On ``lmdm-small-arc`` v4 (4 steps, no guidance, the choir chorale of the drift study, 240 s, seeds 1 and 2; the
command above, 5 min at one thread beside two other jobs): the training data's windows 2.24 / 2.49 / 2.60 / 2.80
(median, 99th, 99.9th, loudest); seed 2 2.39 / 2.82 / 2.98 / 3.01, 892 clipped samples, in windows at 2.99
(median); seed 1 2.33 / 2.70 / 2.83 / 2.86, none clipped. Clipping lives in passages louder than any 0.4 s of the
data, which no per-band ceiling sees.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

PROMPT = "A slow chorale by Johann Sebastian Bach in B-flat minor, 4/4 time at 57 BPM, played on choir."
QUANTILES = (0.5, 0.99, 0.999, 1.0)


def quantiles(x: np.ndarray) -> str:
    return " / ".join(f"{v:.2f}" for v in np.quantile(x, QUANTILES))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--seconds", type=float, default=240.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--data", default="data/music")
    args = p.parse_args()
    torch.set_num_threads(1)
    from lmdm.checkpoint import load_checkpoint
    from lmdm.streaming.generate import generate
    from lmdm.streaming.streamer import checkpoint_sampler
    from lmdm.train.arc.level import DecodedMel, momentary_level, momentary_levels
    from lmdm.train.dataset import encode_latent_set, load_latent_set

    ckpt = load_checkpoint(args.checkpoint)
    ckpt.codec = ckpt.codec.with_decoding(gl_iters=32, gl_init="random")  # as the drift study decodes
    mel = DecodedMel(ckpt.codec)
    data = encode_latent_set(load_latent_set(args.data, ckpt.codec.cfg, progress=False), ckpt.codec)
    train = [data.latents[s : s + n] for s, n, split in
             zip(data.work_start.tolist(), data.work_frames.tolist(), data.splits) if split == "train"]
    real = momentary_levels(mel, train)  # what ARC's momentary ceiling takes its quantile of
    print(f"training data, 0.4 s level (median / 99th / 99.9th / loudest): {quantiles(real)}")
    hop = ckpt.codec.cfg.hop
    for seed in args.seeds:
        sampler = checkpoint_sampler(ckpt.info, steps=args.steps, cfg_scale=args.cfg, seed=seed)
        g = generate(ckpt, args.prompt, args.seconds, sampler)
        with torch.no_grad():
            level = momentary_level(mel(g.latents[None].float()), mel.std, mel.momentary_frames)[0].numpy()
        clipped = np.nonzero(np.abs(g.audio) >= 0.999)[0]
        line = f"seed {seed}: 0.4 s level {quantiles(level)}, {len(clipped)} clipped samples"
        if len(clipped):  # the window starting 0.2 s before each clipped sample's mel frame
            at = np.clip(clipped // hop - mel.momentary_frames // 2, 0, len(level) - 1)
            line += f", in windows at {np.median(level[at]):.2f} (median)"
        print(line)


if __name__ == "__main__":
    main()
