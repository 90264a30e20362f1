"""Loudness within a stream, segment by segment: where a level overshoot in `lmdm eval` comes from.

`lmdm eval` averages each lens over 10 s windows of 30 s streams, so a stream that starts at the data's level and
runs away in its last seconds reads as a louder mean with a wide CI. This prints, for the eval's prompts (the same
validation captions, `lmdm.eval.windows.validation_prompts`) and seeds, the integrated loudness (LUFS, pyloudnorm
via `lmdm.eval.level`) of every segment of every stream, the stream's peak and clipped fraction, and the highest
band of its decoded mel spectrogram against the highest one in the training latents (normalised log-mel: one unit
is 21.7 dB), which tells a runaway the latents carry from one the decoder makes. Optionally a plot: LUFS per
segment, one line per stream, and the mean loudness of real validation windows of the same length (grey).

Usage:
    .venv/bin/python scripts/level_over_time.py CHECKPOINT [--steps 2 4] [--cfg 1] [--seeds 2] [--seconds 30]
        [--segment 5] [--plot docs/level-over-time.png]
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from lmdm.checkpoint import load_checkpoint
from lmdm.eval.level import clipped_fraction, integrated_loudness
from lmdm.eval.windows import prompt_instrument, real_windows, validation_prompts
from lmdm.streaming.generate import generate
from lmdm.streaming.streamer import SamplerConfig
from lmdm.train.dataset import encode_latent_set, load_latent_set


def segment_lufs(audio: np.ndarray, sample_rate: int, segment_s: float) -> list[float]:
    """Integrated loudness (LUFS) of each whole ``segment_s`` segment of ``audio`` ``(samples,)``."""
    n = int(round(segment_s * sample_rate))
    return [integrated_loudness(audio[i : i + n], sample_rate) for i in range(0, len(audio) - n + 1, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=2, help="streams per prompt, seeds 0..K-1")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--segment", type=float, default=5.0, help="segment length in seconds")
    ap.add_argument("--n-prompts", type=int, default=6)
    ap.add_argument("--data", default="data/music")
    ap.add_argument("--plot", default=None, help="write the LUFS-per-segment plot here")
    args = ap.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    sr = ckpt.codec.cfg.sample_rate
    prompts = validation_prompts(args.data, args.n_prompts)
    data = encode_latent_set(load_latent_set(args.data, ckpt.codec.cfg, progress=False), ckpt.codec)
    real_max = float(ckpt.codec.latent_to_mel(data.latents.float()[None]).max())
    real = real_windows(args.data, "val", args.segment, 64, sr)
    real_lufs = [integrated_loudness(w, sr) for w in real.windows]
    real_mean = float(np.mean([x for x in real_lufs if np.isfinite(x)]))
    print(f"highest band of the training latents' decoded mel: {real_max:.2f} (normalised log-mel); real validation "
          f"{args.segment:g} s windows: {real_mean:.1f} LUFS mean over {len(real_lufs)}")
    curves = {}
    for steps in args.steps:
        sampler = SamplerConfig(steps=steps, cfg_scale=args.cfg)
        for i, prompt in enumerate(prompts):
            for seed in range(args.seeds):
                g = generate(ckpt, prompt, args.seconds, replace(sampler, seed=seed))
                lufs = segment_lufs(g.audio, sr, args.segment)
                mel_max = float(ckpt.codec.latent_to_mel(g.latents.float()[None]).max())
                curves[(steps, i, seed)] = lufs
                print(f"{steps} steps, prompt {i} seed {seed}: LUFS per {args.segment:g} s "
                      + " ".join(f"{x:6.1f}" for x in lufs)
                      + f" | peak {np.abs(g.audio).max():.2f}, clipped {100 * clipped_fraction(g.audio, sr):.2f}%, "
                        f"decoded mel max {mel_max:.2f} | {prompt[:48]}", flush=True)
        mean = np.mean([c for (s, _, _), c in curves.items() if s == steps], axis=0)
        print(f"{steps} steps, mean over streams: " + " ".join(f"{x:6.1f}" for x in mean), flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.steps), figsize=(5 * len(args.steps), 3.6), sharey=True, squeeze=False)
        for ax, steps in zip(axes[0], args.steps):
            for (s, i, seed), lufs in curves.items():
                if s == steps:
                    t = (np.arange(len(lufs)) + 0.5) * args.segment
                    label = f"prompt {i}: {prompt_instrument(prompts[i])}" if seed == 0 else None
                    ax.plot(t, lufs, marker="o", ms=3, lw=1, color=f"C{i}", label=label)
            ax.axhline(real_mean, color="0.5", lw=2, alpha=0.6, label="real validation (mean)")
            ax.set_title(f"{ckpt.info.get('name', args.checkpoint)}: {steps} steps, CFG {args.cfg:g}", fontsize=9)
            ax.set_xlabel("time in the stream (s)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"integrated loudness per {args.segment:g} s (LUFS)")
        axes[0][-1].legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
