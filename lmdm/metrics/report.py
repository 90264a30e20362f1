"""``lmdm drift``: stream for minutes, decode it, measure every window with the lenses of ``lmdm eval``, tabulate and
plot each metric over time against a band of real music.

Per non-overlapping window of **decoded audio** (default 30 s):

* **level** (``lmdm.eval.level``): integrated loudness (LUFS), true peak (dBTP), clipped-sample fraction;
* **notes** (``lmdm.eval.notes`` over the bundled transcriber): notes per second, median note length, mean
  polyphony, key clarity;
* **KAD** to real music: the window is cut into consecutive sub-windows of ``min(10 s, window / 2)`` (at least two,
  since the unbiased MMD^2 needs two rows a side), each embedded as ``lmdm eval`` embeds a window
  (``lmdm.eval.suite.window_embeddings``), and ``lmdm.eval.distribution.kad`` compares these few embeddings with
  the reference's (sub-windows of the data set's train pieces). With two or three rows a side the estimate is
  noisy and may be slightly negative; it is read against the band, which is the same estimator over real
  validation windows, so the band carries exactly this noise.

The **real-music band** of each metric is its mean and standard deviation (and N) over real validation windows of
the same length (one window per distinct validation piece of ``--data``): a curve inside the band looks like real
music by that lens. Without a data set the level and notes lenses are still measured, with no band and no KAD.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.errors import UsageError
from lmdm.streaming.streamer import SamplerConfig

LEVEL_METRICS = ("lufs", "true_peak_dbtp", "clipped_fraction")
NOTE_METRICS = ("notes_per_s", "median_length_s", "mean_polyphony", "key_clarity")
#: Every per-window metric, in plot order.
METRICS = (*LEVEL_METRICS, *NOTE_METRICS, "kad")
LABELS = {"lufs": "loudness (LUFS)", "true_peak_dbtp": "true peak (dBTP)", "clipped_fraction": "clipped fraction",
          "notes_per_s": "notes per second", "median_length_s": "median note length (s)",
          "mean_polyphony": "mean polyphony", "key_clarity": "key clarity", "kad": "KAD to real music"}
SUB_WINDOW_S = 10.0
MAX_PIECES = 32


def sub_window_s(window_s: float) -> float:
    """Length of the sub-windows a window's KAD embeds: 10 s, or half the window when shorter (two at least)."""
    return min(SUB_WINDOW_S, window_s / 2)


@dataclass
class Baseline:
    """What a stream is measured with and against.

    Attributes:
        embedder: the drift embedder (eval mode); codec: the codec windows are re-encoded with for it.
        transcribe: ``(audio, sample_rate) -> [(onset_s, offset_s, midi)]``.
        reference: ``(n, embed_dim)`` sub-window embeddings of real training music; None without a data set.
        real_music: ``{metric: {"mean", "std", "windows"}}`` over real validation windows (the shaded band);
            empty without a data set.
        source: where the reference and band come from, in words.
        data_dir: the data set; None = none.
    """

    embedder: object
    codec: MelCodec
    transcribe: Callable[[np.ndarray, int], list]
    reference: np.ndarray | None
    real_music: dict = field(default_factory=dict)
    source: str = ""
    data_dir: str | None = None


def _window_set(windows: np.ndarray, sample_rate: int, name: str = "windows"):
    from lmdm.eval.windows import WindowSet

    return WindowSet(name, "system", np.asarray(windows, np.float32), [name] * len(windows), [""] * len(windows),
                     sample_rate)


def _embed(windows: np.ndarray, baseline_embedder, codec: MelCodec, sample_rate: int) -> np.ndarray:
    from lmdm.eval.suite import window_embeddings

    return window_embeddings(_window_set(windows, sample_rate), baseline_embedder, codec)[0]


def window_rows(audio: np.ndarray, sample_rate: int, window_s: float, baseline: Baseline) -> list[dict]:
    """One row per whole non-overlapping window of ``audio`` ``(samples,)``: ``start_s``, ``end_s`` and every
    metric of :data:`METRICS` (``kad`` is NaN without a reference)."""
    from lmdm.eval.distribution import kad
    from lmdm.eval.level import level
    from lmdm.eval.notes import note_stats
    from lmdm.eval.windows import cut_windows

    sub = sub_window_s(window_s)
    rows = []
    for i, w in enumerate(cut_windows(audio, sample_rate, window_s)):
        lv = level(w, sample_rate)
        ns = note_stats(baseline.transcribe(w, sample_rate), 0.0, len(w) / sample_rate)
        row = {"start_s": i * window_s, "end_s": (i + 1) * window_s}
        row.update({k: float(getattr(lv, k)) for k in LEVEL_METRICS})
        row.update({k: float(getattr(ns, k)) for k in NOTE_METRICS})
        if baseline.reference is not None:
            emb = _embed(cut_windows(w, sample_rate, sub), baseline.embedder, baseline.codec, sample_rate)
            row["kad"] = float(kad(emb, baseline.reference))
        else:
            row["kad"] = float("nan")
        rows.append(row)
    return rows


def _band(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "windows": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "windows": int(len(v))}


def load_baseline(codec_cfg: CodecConfig, data_dir: str | Path | None = None, window_s: float = 30.0,
                  embedder_path: str | Path | None = None, transcriber_path: str | Path | None = None,
                  max_pieces: int = MAX_PIECES, seed: int = 0) -> Baseline:
    """The embedder, the transcriber, and (with ``data_dir``) the real-music reference and band.

    Args:
        codec_cfg: the codec of the stream (its sample rate is the windows').
        data_dir: a built data set: sub-windows of up to ``max_pieces`` train pieces are the KAD reference; the
            first ``window_s`` window of up to ``max_pieces`` validation pieces gives the band. None = no reference.
        embedder_path: the embedder folder (default: the bundled ``data/checkpoints/embedder``).
        transcriber_path: the transcriber folder (default: the bundled one).

    Raises:
        UsageError: ``window_s`` too short for two embedder crops (the per-window KAD needs two sub-windows).
        EmbedderError, TranscriberError: no embedder or transcriber.
        DataError: ``data_dir`` is not a built data set or lacks train or validation pieces of a window.
    """
    from lmdm.eval.transcriber import load_transcriber
    from lmdm.eval.windows import cut_windows, real_pieces
    from lmdm.metrics.embedder import default_embedder_path, load_embedder

    embedder, _ = load_embedder(Path(embedder_path) if embedder_path else default_embedder_path())
    codec = MelCodec(codec_cfg)
    crop_s = embedder.cfg.crop_frames / codec_cfg.frame_rate
    if sub_window_s(window_s) < crop_s:
        raise UsageError(f"--window {window_s:g} s is too short: the per-window KAD embeds two sub-windows of at "
                         f"least the embedder's crop ({crop_s:.1f} s), so the window must be at least "
                         f"{2 * crop_s:.1f} s")
    transcribe = load_transcriber(transcriber_path).transcribe
    base = Baseline(embedder, codec, transcribe, None, {}, "none (no data set: no KAD and no real-music band)", None)
    if data_dir is None:
        return base
    sr, sub = codec_cfg.sample_rate, sub_window_s(window_s)
    ref_windows = [cut_windows(a, sr, sub, 3) for _, a in real_pieces(data_dir, "train", sub, max_pieces, sr, seed)]
    base.reference = _embed(np.concatenate(ref_windows), embedder, codec, sr)
    val = [cut_windows(a, sr, window_s, 1)[0] for _, a in real_pieces(data_dir, "val", window_s, max_pieces, sr, seed)]
    rows = window_rows(np.concatenate(val), sr, window_s, base)
    base.real_music = {m: _band([r[m] for r in rows]) for m in METRICS}
    base.source = (f"{data_dir}: KAD reference = {len(base.reference)} sub-windows of {sub:g} s from "
                   f"{len(ref_windows)} train pieces; band = {len(rows)} validation windows of {window_s:g} s")
    base.data_dir = str(data_dir)
    return base


def stream_audio(ckpt, prompt: str, seconds: float, sampler: SamplerConfig, progress: bool = False,
                 block_filter=None) -> np.ndarray:
    """``(samples,)`` decoded audio of one stream, decoded block by block as a live session would (``block_filter``
    as in ``lmdm.streaming.generate.generate``)."""
    from lmdm.streaming.generate import generate

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="streaming", unit="block")
    out = generate(ckpt, prompt, seconds, sampler, on_block=(lambda i, a: bar.update(1)) if bar else None,
                   block_filter=block_filter)
    if bar is not None:
        bar.close()
    return out.audio


def drift_report(checkpoint: str | None, minutes: float, prompt: str, sampler: SamplerConfig = SamplerConfig(),
                 data_dir: str | None = None, window_s: float = 30.0, label: str | None = None,
                 embedder_path: str | None = None, progress: bool = True) -> dict:
    """Stream ``minutes`` of decoded music and measure every ``window_s`` window (see :func:`measure_drift`).

    The baseline (embedder, transcriber, real-music reference and band) is loaded before streaming, so a bad
    ``data_dir`` or a missing model fails at once.
    """
    from lmdm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    baseline = load_baseline(ckpt.codec.cfg, data_dir, window_s, embedder_path)
    audio = stream_audio(ckpt, prompt, minutes * 60, sampler, progress=progress)
    name = label or (Path(str(ckpt.path)).name + f"-{sampler.sampler}{sampler.steps}")
    return measure_drift(audio, ckpt, name, prompt, sampler, window_s, baseline=baseline)


def measure_drift(audio, ckpt, label: str, prompt: str, sampler: SamplerConfig, window_s: float = 30.0,
                  data_dir: str | None = None, baseline: Baseline | None = None) -> dict:
    """Every drift metric per window of a stream's decoded audio ``(samples,)`` at ``ckpt.codec.sample_rate``.

    Args:
        ckpt: anything with ``codec`` (a ``MelCodec``) and ``path``.
        data_dir: the data set of the reference and band (ignored when ``baseline`` is given); None = none.
        baseline: a loaded :class:`Baseline` (reuse it for several streams).

    Raises:
        UsageError: the stream is shorter than one window, or the window is too short.
        DataError: ``data_dir`` is not a built data set or lacks pieces of a window.

    Returns:
        a JSON-ready dict: label, settings, ``windows`` (one row per window: ``start_s``, ``end_s`` and every metric
        of :data:`METRICS`), ``reference`` (where the reference comes from), ``real_music`` (the band of each
        metric) and ``summary`` (per metric: mean of the windows starting in the first minute and of those ending
        in the last).
    """
    sr = ckpt.codec.sample_rate
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    minutes = len(audio) / sr / 60
    if len(audio) < int(round(window_s * sr)):
        raise UsageError(f"the stream ({minutes * 60:.1f} s) is shorter than one window ({window_s} s)")
    if baseline is None:
        baseline = load_baseline(ckpt.codec.cfg, data_dir, window_s)
    rows = window_rows(audio, sr, window_s, baseline)
    first = [r for r in rows if r["start_s"] < 60 - 1e-6]
    last = [r for r in rows if r["end_s"] > rows[-1]["end_s"] - 60 + 1e-6]
    mean = lambda rs, m: float(np.nanmean([r[m] for r in rs])) if any(math.isfinite(r[m]) for r in rs) else float("nan")
    return {"label": label, "checkpoint": str(ckpt.path), "prompt": prompt, "minutes": minutes,
            "sampler": {"steps": sampler.steps, "sampler": sampler.sampler, "cfg": sampler.cfg_scale, "seed": sampler.seed},
            "window_s": window_s, "sub_window_s": sub_window_s(window_s), "windows": rows,
            "reference": {"source": baseline.source, "data": baseline.data_dir},
            "real_music": baseline.real_music,
            "summary": {m: {"first_minute": mean(first, m), "last_minute": mean(last, m)} for m in METRICS}}


def format_drift(report: dict) -> str:
    """The per-window table, the real-music band and the first-vs-last-minute summary as text."""
    import pandas as pd

    df = pd.DataFrame(report["windows"]).set_index("start_s")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        table = df.drop(columns=["end_s"]).to_string()
    s = report["summary"]
    lines = [f"{report['label']}: {report['minutes']:.1f} min of \"{report['prompt']}\", "
             f"{report['sampler']['steps']} {report['sampler']['sampler']} steps, CFG {report['sampler']['cfg']}, "
             f"windows of {report['window_s']:g} s", table,
             "first minute -> last minute: " + ", ".join(
                 f"{m} {s[m]['first_minute']:.3g} -> {s[m]['last_minute']:.3g}" for m in METRICS),
             f"reference (real music): {report['reference']['source']}"]
    real = report.get("real_music") or {}
    if real:
        lines.append("real validation music, same windows (mean ± sd, N): " + ", ".join(
            f"{m} {real[m]['mean']:.3g} ± {real[m]['std']:.3g}" for m in METRICS if m in real)
            + f" (N = {max(v['windows'] for v in real.values())})")
    return "\n".join(lines)


def plot_drift(reports: list[dict], path: str | Path) -> Path:
    """Every metric over time (minutes) for one or more reports, with the first report's real-music band (mean ±
    1 sd) shaded behind each curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4))
    for ax, m in zip(axes.flat, METRICS):
        real = reports[0].get("real_music", {}).get(m)
        if real and real.get("windows") and math.isfinite(real["mean"]):
            ax.axhspan(real["mean"] - real["std"], real["mean"] + real["std"], color="grey", alpha=0.25,
                       label=f"real music ±1 sd (N={real['windows']})")
            ax.axhline(real["mean"], color="grey", lw=0.8)
        for r in reports:
            mids = [(w["start_s"] + w["end_s"]) / 120 for w in r["windows"]]
            ax.plot(mids, [w.get(m, float("nan")) for w in r["windows"]], "o-", ms=3, label=r["label"])
        ax.set_title(LABELS[m], fontsize=9)
        ax.set_xlabel("time in the stream (min)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(METRICS):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if len(METRICS) < axes.size:
        axes.flat[-1].legend(handles, names, loc="center", fontsize=8)
    else:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
