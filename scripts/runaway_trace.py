"""One stream of a drift study, second by second: when and how a level runaway starts.

`lmdm drift-study` and `scripts/level_tail.py` measure a stream per minute; a burst that fills a minute's LUFS says
nothing about whether it begins at the stream's cold start or half a minute in, nor how fast it grows. This streams
one prompt and seed of every system in a study config exactly as the study does (its decoding, sampler and guard:
``lmdm.metrics.drift_study.checkpoint_generator``) and prints, per ``--hop`` seconds, the RMS level and the sample
peak (dBFS; float audio, so a peak above 0 dBFS is the size of the overshoot, not a clipped value), the samples
at full scale (|x| >= 0.999, what the study counts as clipped), the dominant frequency and the share of the power below
150 Hz (the runaways traced so far are one bass note that grows). With ``--plot``: per system the log-mel spectrogram
(librosa) above the RMS and peak traces, full scale marked.

Usage:
    .venv/bin/python scripts/runaway_trace.py configs/runaway-trace.json --seed 0 [--prompt 0] [--seconds 60]
        [--hop 0.5] [--plot docs/level-runaway.png]
"""
from __future__ import annotations

import argparse

import numpy as np

from lmdm.eval.level import CLIP_THRESHOLD
from lmdm.metrics.drift_study import checkpoint_generator, decoding_overrides, load_study, study_prompts


def trace(audio: np.ndarray, sample_rate: int, hop_s: float, low_hz: float = 150.0) -> dict[str, np.ndarray]:
    """Per ``hop_s`` segment of ``audio`` ``(samples,)`` float: ``t`` (segment start, s), ``rms_db`` and
    ``peak_db`` (dBFS), ``clipped`` (samples at full scale), ``dominant_hz`` (the strongest bin of the segment's
    Hann-windowed power spectrum, Hz) and ``low_share`` (its power below ``low_hz`` Hz, fraction)."""
    n = int(round(hop_s * sample_rate))
    seg = audio[: len(audio) // n * n].reshape(-1, n)
    power = np.abs(np.fft.rfft(seg * np.hanning(n), axis=1)) ** 2
    hz = np.fft.rfftfreq(n, 1 / sample_rate)
    return {"t": np.arange(len(seg)) * hop_s,
            "dominant_hz": hz[power.argmax(axis=1)],
            "low_share": power[:, hz < low_hz].sum(axis=1) / (power.sum(axis=1) + 1e-20),
            "rms_db": 10 * np.log10(np.mean(seg**2, axis=1) + 1e-12),
            "peak_db": 20 * np.log10(np.abs(seg).max(axis=1) + 1e-12),
            "clipped": (np.abs(seg) >= CLIP_THRESHOLD).sum(axis=1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a drift-study config (lmdm drift-study --config)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", type=int, default=0, help="index into the study's prompts")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--hop", type=float, default=0.5, help="segment length of the printed trace, seconds")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    cfg = load_study(args.config)
    prompts = study_prompts(cfg)
    if not 0 <= args.prompt < len(prompts):
        raise SystemExit(f"--prompt must index the study's {len(prompts)} prompts (0..{len(prompts) - 1}), "
                         f"got {args.prompt}")
    prompt = prompts[args.prompt]
    generate = checkpoint_generator(decoding=decoding_overrides(cfg), data=cfg.data)
    sr = 16000
    runs = []
    for system in cfg.systems:
        out = generate(system, prompt, args.seed, args.seconds)
        audio = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float32).reshape(-1)
        tr = trace(audio, sr, args.hop)
        runs.append((system.label, audio, tr))
        print(f"{system.label} | {prompt[:60]} | seed {args.seed}")
        for t, r, p, c, hz, low in zip(*(tr[k] for k in ("t", "rms_db", "peak_db", "clipped", "dominant_hz",
                                                          "low_share"))):
            print(f"  {t:6.1f} s  rms {r:6.1f} dBFS  peak {p:6.1f} dBFS  clipped {int(c):6d}  "
                  f"dominant {hz:6.1f} Hz  below 150 Hz {100 * low:5.1f}%")
    if args.plot:
        import librosa
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2 * len(runs), 1, figsize=(11, 4.2 * len(runs)), sharex=True, squeeze=False)
        for k, (label, audio, tr) in enumerate(runs):
            mel = librosa.feature.melspectrogram(y=np.clip(audio, -8, 8), sr=sr, n_fft=1024, hop_length=256,
                                                 n_mels=128, fmax=8000)
            ax = axes[2 * k, 0]
            frames = mel.shape[1] // 8 * 8  # 8-frame means (128 ms): the plot's resolution, a small file
            mel = mel[:, :frames].reshape(mel.shape[0], -1, 8).mean(axis=2)
            ax.imshow(10 * np.log10(mel + 1e-10), origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=30,
                      extent=(0, frames * 256 / sr, 0, 128))
            ax.set_ylabel("mel band")
            ax.set_title(f"{label}: {prompt[:70]} (stream seed {args.seed})", fontsize=9)
            ax = axes[2 * k + 1, 0]
            ax.plot(tr["t"], tr["rms_db"], label=f"RMS per {args.hop:g} s", color="tab:blue")
            ax.plot(tr["t"], tr["peak_db"], label="sample peak", color="tab:orange", lw=0.8)
            ax.axhline(0, color="red", ls="--", lw=0.8, label="full scale (0 dBFS)")
            ax.set_ylabel("dBFS")
            ax.legend(loc="upper left", fontsize=7)
            low = ax.twinx()
            low.plot(tr["t"], 100 * tr["low_share"], color="tab:green", lw=0.8, ls=":")
            low.set_ylim(0, 100)
            low.set_ylabel("power below 150 Hz (%, dotted)", color="tab:green", fontsize=8)
        axes[-1, 0].set_xlabel("stream time (s)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        from PIL import Image  # matplotlib's own dependency: a 128-colour palette keeps the spectrogram's file small

        Image.open(args.plot).convert("RGB").quantize(128).save(args.plot, optimize=True)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
