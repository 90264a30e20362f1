"""``lmdm drift``: stream for minutes, measure every window, tabulate and plot (drift metrics in ``drift.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmdm.audio.codec import CodecConfig
from lmdm.checkpoint import load_checkpoint
from lmdm.errors import UsageError
from lmdm.metrics.drift import METRICS, window_metrics
from lmdm.metrics.embedder import Embedder, default_embedder_path, load_embedder
from lmdm.metrics.reference import Reference, real_music_levels, reference_stats
from lmdm.streaming.generate import stream_latents
from lmdm.streaming.streamer import SamplerConfig

LABELS = {"fd": "Fréchet distance (embedding)", "loudness_db": "loudness (dB)", "flatness": "spectral flatness",
          "mel_distance": "mel-statistics distance", "pc_entropy": "pitch-class entropy (bits)"}


@dataclass
class Baseline:
    """What a stream is measured with and against.

    Attributes:
        embedder: the embedding classifier (eval mode).
        embedder_metrics: its stored validation accuracies (and the real-music levels it was saved with).
        reference: real-music statistics the windows are compared against.
        real_music: ``{metric: {"mean", "std", "windows"}}`` of real validation music (the grey band of the plot).
        source: where the reference comes from, in words (printed with every report).
        data_dir: the data set the reference was computed from; None = the one bundled with the embedder.
    """

    embedder: Embedder
    embedder_metrics: dict
    reference: Reference
    real_music: dict
    source: str
    data_dir: str | None


def load_baseline(codec: CodecConfig, data_dir: str | Path | None = None, embedder_path: str | Path | None = None,
                  window_s: float = 30.0) -> Baseline:
    """The embedder and the reference of real music for drift measurements.

    Args:
        codec: the codec of the latents that will be measured.
        data_dir: a built data set whose validation split is the reference (computed once, then cached in
            ``DATA/cache/``), with real-music levels for windows of ``window_s`` seconds; None = the reference
            and levels stored beside the embedder by ``lmdm metrics train-embedder`` (levels for 30 s windows).
        embedder_path: the embedder folder (default: the bundled ``data/checkpoints/embedder``).

    Raises:
        EmbedderError: no embedder at ``embedder_path``.
        DataError: ``data_dir`` is not a built data set or has no validation works.
    """
    emb_path = Path(embedder_path) if embedder_path else default_embedder_path()
    embedder, emb_metrics = load_embedder(emb_path)
    if data_dir is None:
        ref = Reference.load(emb_path / "reference.npz")
        return Baseline(embedder, emb_metrics, ref, emb_metrics.get("real_music", {}),
                        f"the reference bundled with the embedder ({emb_path / 'reference.npz'})", None)
    ref = reference_stats(data_dir, codec, embedder)
    real = real_music_levels(data_dir, codec, embedder, ref, window_s)
    return Baseline(embedder, emb_metrics, ref, real, f"the validation split of {data_dir}", str(data_dir))


def drift_report(checkpoint: str | None, minutes: float, prompt: str, sampler: SamplerConfig = SamplerConfig(),
                 data_dir: str | None = None, window_s: float = 30.0, label: str | None = None,
                 embedder_path: str | None = None, progress: bool = True) -> dict:
    """Stream ``minutes`` of music and compute every drift metric per ``window_s`` window (see
    :func:`measure_drift`).

    The reference is loaded before streaming (so a bad ``data_dir`` fails at once): the validation split of
    ``data_dir``, or, when None, the reference bundled with the embedder (no data set needed).
    """
    ckpt = load_checkpoint(checkpoint)
    baseline = load_baseline(ckpt.codec, data_dir, embedder_path, window_s)
    latents = stream_latents(ckpt, prompt, minutes * 60, sampler, progress=progress)
    name = label or (Path(str(ckpt.path)).name + f"-{sampler.sampler}{sampler.steps}")
    return _measure(latents, ckpt, name, prompt, sampler, window_s, baseline)


def measure_drift(latents, ckpt, label: str, prompt: str, sampler: SamplerConfig, window_s: float = 30.0,
                  embedder_path: str | None = None, data_dir: str | None = None) -> dict:
    """Every drift metric per window of a stream's latent frames ``(frames, channels)``.

    Args:
        latents: ``(frames, channels)`` latent frames of ``ckpt``'s codec.
        data_dir: the data set whose validation split is the reference; None = the reference bundled with the
            embedder (see :func:`load_baseline`).

    Raises:
        UsageError: the stream is shorter than one window.
        EmbedderError: no embedder (``lmdm metrics train-embedder`` builds one).
        DataError: ``data_dir`` is not a built data set or has no validation works.

    Returns:
        a JSON-ready dict: label, settings, ``windows`` (one row per window), ``reference`` (where it comes from),
        the embedder's accuracy and the real-music levels, and ``summary`` (first vs last minute of the Fréchet
        distance).
    """
    return _measure(latents, ckpt, label, prompt, sampler, window_s,
                    load_baseline(ckpt.codec, data_dir, embedder_path, window_s))


def _measure(latents, ckpt, label: str, prompt: str, sampler: SamplerConfig, window_s: float,
             baseline: Baseline) -> dict:
    rows = window_metrics(latents, ckpt.codec, baseline.embedder, baseline.reference, window_s)
    minutes = latents.shape[0] / ckpt.codec.frame_rate / 60
    if not rows:
        raise UsageError(f"the stream ({minutes * 60:.1f} s) is shorter than one window ({window_s} s)")
    # the windows that start in the first minute, and those that end in the last minute of the measured span
    first = [r["fd"] for r in rows if r["start_s"] < 60 - 1e-6]
    last = [r["fd"] for r in rows if r["end_s"] > rows[-1]["end_s"] - 60 + 1e-6]
    emb_metrics = baseline.embedder_metrics
    return {"label": label, "checkpoint": str(ckpt.path), "prompt": prompt, "minutes": minutes,
            "sampler": {"steps": sampler.steps, "sampler": sampler.sampler, "cfg": sampler.cfg_scale, "seed": sampler.seed},
            "window_s": window_s, "windows": rows,
            "reference": {"source": baseline.source, "data": baseline.data_dir},
            "embedder": {k: emb_metrics.get(k) for k in ("val_collection_accuracy", "val_instrument_accuracy",
                                                         "chance_collection", "chance_instrument")},
            "real_music": baseline.real_music,
            "summary": {"fd_first_minute": float(np.mean(first)), "fd_last_minute": float(np.mean(last)),
                        "fd_last_over_first": float(np.mean(last) / max(np.mean(first), 1e-9))}}


def format_drift(report: dict) -> str:
    """The per-window table and the first-vs-last-minute summary as text."""
    import pandas as pd

    df = pd.DataFrame(report["windows"]).set_index("start_s")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        table = df.drop(columns=["end_s"]).to_string()
    s, e, real = report["summary"], report["embedder"], report.get("real_music", {}).get("fd", {})
    lines = [f"{report['label']}: {report['minutes']:.1f} min of \"{report['prompt']}\", "
             f"{report['sampler']['steps']} {report['sampler']['sampler']} steps, CFG {report['sampler']['cfg']}",
             table,
             f"Fréchet distance: first minute {s['fd_first_minute']:.3f}, last minute {s['fd_last_minute']:.3f} "
             f"(last / first = {s['fd_last_over_first']:.2f})"]
    if "reference" in report:
        lines.append(f"reference (real music): {report['reference']['source']}")
    if real:
        lines.append(f"real validation music, same windows: Fréchet distance {real['mean']:.3f} ± {real['std']:.3f}")
    if e.get("val_collection_accuracy") is not None:
        lines.append(f"embedder validation accuracy: collection {e['val_collection_accuracy']:.2f} (majority "
                     f"{e['chance_collection']:.2f}), instrument {e['val_instrument_accuracy']:.2f} (majority "
                     f"{e['chance_instrument']:.2f})")
    return "\n".join(lines)


def plot_drift(reports: list[dict], path: str | Path) -> Path:
    """Every metric over time for one or more reports, with the real-music level as a grey band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, m in zip(axes, METRICS):
        for r in reports:
            mids = [(w["start_s"] + w["end_s"]) / 120 for w in r["windows"]]
            ax.plot(mids, [w[m] for w in r["windows"]], "o-", ms=3, label=r["label"])
        real = reports[0].get("real_music", {}).get(m)
        if real:
            ax.axhspan(real["mean"] - real["std"], real["mean"] + real["std"], color="grey", alpha=0.2,
                       label="real music (±1 sd)")
        ax.set_title(LABELS[m], fontsize=9)
        ax.set_xlabel("time in the stream (min)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
