"""Spectrograms of real validation pieces beside the bundled model's streams on their captions (README, "The
sampler, at equal cost"): what the notes lens's numbers look like.

    .venv/bin/python scripts/real_vs_generated.py [--out docs/real-vs-generated.png] [--checkpoint DIR]

For each of three forms (chorale, fiddle tune, Renaissance mass movement) the first validation piece of that form
in the manifest: 10 s of the real audio (from 5 s) and seconds 10-20 of a 20 s stream on its caption (seed 1,
the default sampler), both as the codec's log-mel of the audio. About 40 s on one core; needs `lmdm data build`.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from lmdm.audio.io import load_audio
from lmdm.checkpoint import load_checkpoint, repo_root
from lmdm.streaming.generate import generate
from lmdm.streaming.streamer import SamplerConfig

FORMS = ("chorale", "fiddle tune", "Renaissance mass movement")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/real-vs-generated.png")
    ap.add_argument("--checkpoint", default=str(repo_root() / "data" / "checkpoints" / "lmdm-small"))
    ap.add_argument("--data", default="data/music")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint)
    sr = ckpt.codec.sample_rate
    with open(Path(args.data) / "manifest.csv") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    fig, axes = plt.subplots(2, len(FORMS), figsize=(15, 5.5), sharey=True)
    for j, form in enumerate(FORMS):
        piece = next((r for r in val if r["form"] == form), None)
        if piece is None:
            raise SystemExit(f"no validation piece of form {form!r} in {args.data}; build the data set with "
                             "`lmdm data build --hours 10`")
        real = load_audio(Path(args.data) / piece["audio"], sr)[5 * sr : 15 * sr]
        gen = generate(ckpt, piece["caption"], 20.0, SamplerConfig(seed=1)).audio[10 * sr : 20 * sr]
        for i, (label, audio) in enumerate((("real", real), ("generated", gen))):
            mel = ckpt.codec.audio_to_mel(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None])[0]
            axes[i, j].imshow(mel.numpy().T, origin="lower", aspect="auto", cmap="magma", vmin=-2.5, vmax=2.5,
                              extent=[0, len(audio) / sr, 0, mel.shape[1]])
            axes[i, j].set_title(f"{label}: {piece['caption'][:60]}", fontsize=8)
            axes[i, j].set_xlabel("time (s)")
        axes[0, j].set_ylabel("mel band")
        axes[1, j].set_ylabel("mel band")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=50)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
