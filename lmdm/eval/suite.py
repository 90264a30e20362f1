"""``lmdm eval``: every lens over every row, with sample sizes, confidence intervals and calibration rows.

Rows (``lmdm.eval.windows``): real validation (its distance to the reference is the noise floor), the prompts' own
pieces (when the prompts are validation captions: the same music the systems are asked for), real through
codec + decoder (the vocoder ceiling), white noise and silence (trivial baselines), then each system. Lenses
(DESIGN.md section 7), all measured on decoded audio, per non-overlapping window:

* **level** (``lmdm.eval.level``): integrated loudness (LUFS), true peak (dBTP), clipped-sample fraction, loudness
  range; the row reports the mean over windows with a percentile-bootstrap 95% CI;
* **seams** (``lmdm.eval.seams``): frame and block seam ratios of the re-encoded log-mel (1.0 in real music);
* **notes** (``lmdm.eval.notes`` over the in-house transcriber ``lmdm.eval.transcriber``): notes per second,
  median note length, mean polyphony, active fraction, pitch range, key clarity; mean and CI likewise;
* **distribution** (``lmdm.eval.distribution``): KAD (primary) and FD / FD-infinity (secondary) between the row's
  window embeddings and the reference's, with N, the dimension and CIs. The embedding is the drift embedder's
  penultimate layer over the audio re-encoded with the codec, averaged over the window's non-overlapping crops;
* **adherence**: how often the embedder's instrument head names the instrument the window should sound like, the
  contour correlation of rendered sketches (``lmdm.control.evaluate``, traced melodies and drawn shapes),
  and a memorisation check (median nearest-neighbour distance of the row's windows to the training reference,
  relative to the same for real validation windows: well below 1 means copying).

A lens that does not separate real validation from white noise and silence (CIs overlapping) is flagged broken
in the report's ``checks``.

Generated audio is measured as the streamer decodes it, before a file writer clips it to [-1, 1]: its true peak
and clipped fraction say how far past full scale it goes (what a listener hears from the saved file is clipped).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.config import ConfigError
from lmdm.errors import UsageError
from lmdm.eval.distribution import compare_sets
from lmdm.eval.level import level
from lmdm.eval.notes import note_stats, pitch_class_histogram
from lmdm.eval.seams import seam_ratios
from lmdm.eval.windows import (WindowSet, generated_windows, noise_windows, prompt_index, prompt_piece_windows,
                               real_windows, silence_windows, through_codec, windows_per_stream)
from lmdm.streaming.streamer import SamplerConfig

LEVEL_FIELDS = ("lufs", "true_peak_dbtp", "clipped_fraction", "lra_lu")
NOTE_FIELDS = ("notes_per_s", "median_length_s", "mean_polyphony", "active_fraction", "pitch_range", "key_clarity")


@dataclass(frozen=True)
class EvalConfig:
    """What ``lmdm eval`` measures and how much of it.

    Attributes:
        data: built data set (reference = its train split, real rows = its validation split).
        window_s: window length, seconds (every lens looks at whole non-overlapping windows).
        seconds: length of each generated stream, seconds.
        seeds: streams per prompt.
        n_prompts: prompts drawn from validation captions when none are given.
        max_pieces: at most this many distinct pieces for the reference and for the real validation row.
        sampler: the systems' sampler (steps, sampler, CFG); stream ``i`` of a prompt uses seed ``sampler.seed + i``.
        n_boot: bootstrap resamples for every CI.
        seed: seeds piece choice, noise and bootstraps.
        sketch_n: traced validation melodies and synthetic shapes each system renders for the sketch-adherence
            lens (``lmdm.control.evaluate``, as ``lmdm sketch-eval``); 0 = skip it.
        sketch_seconds: length of each sketch render, seconds.
    """

    data: str = "data/music"
    window_s: float = 10.0
    seconds: float = 30.0
    seeds: int = 3
    n_prompts: int = 6
    max_pieces: int = 64
    sampler: SamplerConfig = SamplerConfig()
    n_boot: int = 200
    seed: int = 0
    sketch_n: int = 4
    sketch_seconds: float = 8.0

    def __post_init__(self) -> None:
        if not (isinstance(self.window_s, (int, float)) and math.isfinite(self.window_s) and self.window_s >= 3.0):
            raise ConfigError(f"window must be at least 3 s (the loudness range needs 3 s), got {self.window_s!r}")
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError(f"seconds must be a positive number, got {self.seconds!r}")
        if self.seconds < self.window_s:
            raise ConfigError(f"seconds ({self.seconds:g}) must be at least one window ({self.window_s:g} s)")
        for k in ("seeds", "n_prompts", "max_pieces", "n_boot"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{k} must be a positive integer, got {v!r}")
        if isinstance(self.sketch_n, bool) or not isinstance(self.sketch_n, int) or self.sketch_n < 0:
            raise ConfigError(f"sketch_n must be a whole number >= 0, got {self.sketch_n!r}")

    @classmethod
    def quick(cls, **changes) -> EvalConfig:
        """A small run for CI and notebooks (a few minutes on 2 cores; wide CIs)."""
        base = dict(window_s=5.0, seconds=10.0, seeds=1, n_prompts=2, max_pieces=16, n_boot=50, sketch_n=1,
                    sketch_seconds=4.0)
        return cls(**{**base, **changes})


def stream_seeds(cfg: EvalConfig) -> list[int]:
    """The seeds of each prompt's streams: ``sampler.seed``, ``sampler.seed + 1``, ..."""
    return [cfg.sampler.seed + i for i in range(cfg.seeds)]


# ---- per-window lenses ------------------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], n_boot: int, rng: np.random.Generator, alpha: float = 0.05) -> dict:
    """Mean of the finite values with a percentile-bootstrap CI; ``n`` counts them. Non-finite values (the
    loudness of silence is -inf) are counted in ``n_nonfinite``; if no value is finite the mean is the first one.
    """
    return _bootstrap(values, n_boot, rng, alpha, np.mean, "mean")


def median_ci(values: Sequence[float], n_boot: int, rng: np.random.Generator, alpha: float = 0.05) -> dict:
    """:func:`mean_ci` for the median (key ``median``): robust to the odd runaway stream of a drift study
    (``lmdm.metrics.drift_stats``)."""
    return _bootstrap(values, n_boot, rng, alpha, np.median, "median")


def _bootstrap(values: Sequence[float], n_boot: int, rng: np.random.Generator, alpha: float, stat, key: str) -> dict:
    """``stat`` (``np.mean`` or ``np.median``, with an ``axis``) of the finite values and its percentile-bootstrap CI
    over ``n_boot`` resamples with replacement."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    out = {"n": int(len(ok)), "n_nonfinite": int(len(v) - len(ok))}
    if len(ok) == 0:
        return {**out, key: float(v[0]) if len(v) else float("nan"), "ci": [float("nan"), float("nan")]}
    boots = stat(ok[rng.integers(0, len(ok), size=(n_boot, len(ok)))], axis=1) if len(ok) > 1 else ok
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {**out, key: float(stat(ok)), "ci": [float(lo), float(hi)]}


def level_values(ws: WindowSet) -> dict[str, list[float]]:
    """Per-window values of the level lens."""
    rows = [level(w, ws.sample_rate) for w in ws.windows]
    return {k: [float(getattr(r, k)) for r in rows] for k in LEVEL_FIELDS}


def seam_values(ws: WindowSet, codec: MelCodec, block_frames: int, window_s: float) -> dict[str, list[float]]:
    """Per-window frame and block seam ratios (``lmdm.eval.seams``) of the audio re-encoded to log-mel. A piece's
    ``k``-th window starts ``k * window_s`` into its stream; the grid of latent frames and blocks is placed from
    there (for real music there is no grid, and the ratios read 1 wherever it is placed)."""
    patch, hop = codec.cfg.patch, codec.cfg.hop
    out: dict[str, list[float]] = {"frame": [], "block": []}
    seen: dict[str, int] = {}
    for w, piece in zip(ws.windows, ws.piece):
        k = seen.get(piece, 0)
        seen[piece] = k + 1
        start = int(round(k * window_s * ws.sample_rate / hop))  # mel frames into the stream
        mel = codec.audio_to_mel(torch.from_numpy(np.ascontiguousarray(w))[None])[0].numpy()
        r = seam_ratios(mel, patch, block_frames * patch, offset=-start % (block_frames * patch))
        for key in out:
            out[key].append(r[key])
    return out


def note_values(ws: WindowSet, transcribe: Callable[[np.ndarray, int], list]
                ) -> tuple[dict[str, list[float]], np.ndarray]:
    """Per-window values of the notes lens (``transcribe(audio, sample_rate) -> [(onset_s, offset_s, midi)]``)
    and the row's ``(12,)`` pitch-class histogram (seconds sounded per pitch class, C = 0, over all windows)."""
    out: dict[str, list[float]] = {k: [] for k in NOTE_FIELDS}
    pcs = np.zeros(12)
    for w in ws.windows:
        notes, end = transcribe(w, ws.sample_rate), len(w) / ws.sample_rate
        stats = note_stats(notes, 0.0, end)
        pcs += pitch_class_histogram(notes, 0.0, end)
        for k in NOTE_FIELDS:
            out[k].append(float(getattr(stats, k)))
    return out, pcs


@torch.no_grad()
def window_embeddings(ws: WindowSet, embedder, codec: MelCodec) -> tuple[np.ndarray, np.ndarray]:
    """``(n, embed_dim)`` one pooled embedding per window (mean over its non-overlapping embedder crops) and
    ``(n, n_instruments)`` the mean instrument logits."""
    crop = embedder.cfg.crop_frames
    embs, logits = [], []
    for w in ws.windows:
        lat = codec.encode_numpy(w)
        k = max(1, lat.shape[0] // crop)
        if lat.shape[0] < crop:
            raise UsageError(f"windows of {len(w) / ws.sample_rate:g} s are shorter than the embedder's crop "
                             f"({crop / codec.cfg.frame_rate:.1f} s): use a longer window")
        crops = lat[: k * crop].reshape(k, crop, -1)
        e, _, li = embedder(crops)
        embs.append(e.mean(0).numpy())
        logits.append(li.mean(0).numpy())
    return np.stack(embs), np.stack(logits)


def instrument_hits(logits: np.ndarray, wanted: Sequence[str], names: Sequence[str]) -> list[float]:
    """1.0 where the instrument head's best guess is the wanted instrument, 0.0 where not, NaN where none is
    wanted."""
    best = [names[i] for i in logits.argmax(1)] if len(names) else [""] * len(logits)
    return [float("nan") if not w else float(b == w) for b, w in zip(best, wanted)]


def per_prompt_means(pieces: Sequence[str], values: dict[str, list[float]]) -> dict[str, list[float | None]]:
    """Per-prompt means of per-window values, for rows whose windows belong to prompts (``prompt{i}...`` pieces).

    Args:
        pieces: the row's ``n`` piece ids (``WindowSet.piece``).
        values: ``{lens.value: n per-window values}``.

    Returns:
        ``{lens.value: [mean over prompt i's finite windows, or None where it has none]}`` (index = prompt index),
        or ``{}`` for a row whose pieces are no prompts' (real works, calibration rows).
    """
    idx = [prompt_index(p) for p in pieces]
    if not idx or any(i is None for i in idx):
        return {}
    n = max(idx) + 1
    out: dict[str, list[float | None]] = {}
    for key, vals in values.items():
        sums, counts = [0.0] * n, [0] * n
        for i, v in zip(idx, vals):
            if math.isfinite(v):
                sums[i] += v
                counts[i] += 1
        out[key] = [s / c if c else None for s, c in zip(sums, counts)]
    return out


def nearest_distances(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``(n,)`` Euclidean distance of each row of ``x`` to its nearest row of ``ref``."""
    d2 = (x**2).sum(1)[:, None] + (ref**2).sum(1)[None] - 2 * x @ ref.T
    return np.sqrt(np.maximum(d2.min(1), 0.0))


# ---- the report ---------------------------------------------------------------------------------------------------
def evaluate(systems: dict[str, Callable[[str, int], np.ndarray]], prompts: Sequence[str], cfg: EvalConfig,
             codec_cfg: CodecConfig, embedder, transcribe: Callable[[np.ndarray, int], list],
             progress: Callable[[str], None] | None = None, system_info: dict | None = None,
             sketches: dict[str, Callable[[], list[float]]] | None = None,
             latent_codecs: dict[str, MelCodec] | None = None, block_frames: int = 16) -> dict:
    """Measure every row with every lens.

    Args:
        systems: ``{name: generate_audio(prompt, seed) -> (samples,) decoded audio}``.
        prompts: the prompts every system streams (each with the seeds of :func:`stream_seeds`).
        cfg: sizes and sampler.
        codec_cfg: the mel codec the systems and the embedder use (windows are re-encoded with it).
        embedder: a loaded ``lmdm.metrics.embedder.Embedder`` (eval mode).
        transcribe: ``(audio, sample_rate) -> [(onset_s, offset_s, midi)]``.
        progress: called with a short message per stage.
        sketches: ``{system name: () -> contour correlations}`` of the sketch-adherence lens (NaN = unmeasurable).
        latent_codecs: ``{label: codec}`` learned latents the systems diffuse; each adds a ceiling row "real
            through LABEL + decoder" (real music encoded to that latent and decoded), beside the raw-mel one.
        block_frames: latent frames per block of the systems (the grid of the block seam ratio).

    Returns:
        a JSON-ready report: ``config``, ``rows`` (per row: name, kind, n windows and pieces, every lens's
        mean/CI or distance dict, and ``by_prompt``: per-prompt means of the level and notes values for rows
        streamed on the prompts or cut from their own pieces), ``checks`` (which lenses separate the calibration
        rows).

    Raises:
        DataError: the data set lacks a train or validation split with whole windows.
    """
    say = progress or (lambda msg: None)
    sr = codec_cfg.sample_rate
    codec = MelCodec(codec_cfg)
    rng = np.random.default_rng(cfg.seed)
    say("reading real music")
    ref = real_windows(cfg.data, "train", cfg.window_s, cfg.max_pieces, sr, cfg.seed, "reference (train)")
    val = real_windows(cfg.data, "val", cfg.window_s, cfg.max_pieces, sr, cfg.seed, "real validation (noise floor)")
    rms = float(np.median(np.sqrt((val.windows**2).mean(1))))
    rows = [val]
    own = prompt_piece_windows(cfg.data, prompts, cfg.window_s, windows_per_stream(cfg.seconds, cfg.window_s), sr)
    if own is not None:
        rows.append(own)
    say("real music through the codec and Griffin-Lim")
    # decoded block by block with the streaming decoder, as every system's stream is
    rows.append(through_codec(val, codec, cfg.seed, "real through codec + decoder (ceiling)", block_frames))
    for label, latent_codec in (latent_codecs or {}).items():
        say(f"real music through {label}")
        rows.append(through_codec(val, latent_codec, cfg.seed, f"real through {label} + decoder (ceiling)",
                                  block_frames))
    rows.append(noise_windows(len(val), cfg.window_s, sr, rms, cfg.seed))
    rows.append(silence_windows(len(val), cfg.window_s, sr))
    for name, gen in systems.items():
        say(f"streaming {name}: {len(prompts)} prompts x {cfg.seeds} seeds x {cfg.seconds:g} s")
        rows.append(generated_windows(name, gen, prompts, stream_seeds(cfg), cfg.window_s, sr,
                                      (system_info or {}).get(name, {})))
    say("embedding the reference")
    ref_emb, _ = window_embeddings(ref, embedder, codec)
    names = list(embedder.cfg.instruments)
    val_nn = None
    report_rows = []
    for ws in rows:
        say(f"measuring {ws.name} ({len(ws)} windows)")
        emb, logits = window_embeddings(ws, embedder, codec)
        lv, (nv, pcs) = level_values(ws), note_values(ws, transcribe)
        nn = nearest_distances(emb, ref_emb)
        if val_nn is None:
            val_nn = float(np.median(nn))
        row = {"name": ws.name, "kind": ws.kind, "windows": len(ws), "pieces": len(set(ws.piece)), "info": ws.info,
               "level": {k: mean_ci(v, cfg.n_boot, rng) for k, v in lv.items()},
               "notes": {k: mean_ci(v, cfg.n_boot, rng) for k, v in nv.items()},
               "seams": {k: mean_ci(v, cfg.n_boot, rng)
                         for k, v in seam_values(ws, codec, block_frames, cfg.window_s).items()},
               "histograms": {"polyphony": [v for v in nv["mean_polyphony"] if math.isfinite(v)],
                              "pitch_class_seconds": pcs.tolist()},
               "by_prompt": per_prompt_means(ws.piece, {**{f"level.{k}": v for k, v in lv.items()},
                                                         **{f"notes.{k}": v for k, v in nv.items()}}),
               "distribution": compare_sets(emb, ref_emb, n_boot=cfg.n_boot, rng=rng),
               "adherence": {"instrument": mean_ci(instrument_hits(logits, ws.instrument, names), cfg.n_boot, rng),
                             "memorisation_nn_ratio": float(np.median(nn)) / val_nn if val_nn else float("nan")}}
        if ws.kind == "system" and sketches and ws.name in sketches:
            say(f"sketch adherence of {ws.name}")
            row["adherence"]["sketch_contour"] = mean_ci(sketches[ws.name](), cfg.n_boot, rng)
        report_rows.append(row)
    return {"config": _json_config(cfg), "prompts": list(prompts), "reference": {"pieces": len(ref), "data": cfg.data},
            "rows": report_rows, "checks": separation_checks(report_rows)}


def _json_config(cfg: EvalConfig) -> dict:
    return dataclasses.asdict(cfg)


def _separated(a: dict, b: dict) -> bool:
    """Whether two mean/CI dicts are apart: disjoint CIs, or one of them has no finite value at all."""
    if a["n"] == 0 or b["n"] == 0:
        return a["n"] != b["n"] or a["mean"] != b["mean"]
    return a["ci"][1] < b["ci"][0] or b["ci"][1] < a["ci"][0]


#: Values that measure a defect rather than music, so they need not tell music from noise and silence: the
#: clipped fraction is 0 for all three (its calibration is the clipped copy in tests/test_eval_suite.py).
NOT_SEPARATING = {("level", "clipped_fraction")}


def separation_checks(rows: list[dict]) -> dict:
    """For each lens value: does it separate real validation music from white noise and from silence?

    The distribution lens counts as separating when the real row's KAD CI lies below the noise and silence
    rows' KAD CIs. A lens that separates neither is marked broken.
    """
    by = {r["name"].split(" (")[0]: r for r in rows}
    real, noise, silence = by.get("real validation"), by.get("white noise"), by.get("silence")
    if real is None or noise is None or silence is None:
        return {}
    out = {}
    for lens in ("level", "notes"):
        for k, v in real[lens].items():
            if (lens, k) in NOT_SEPARATING:
                continue
            out[f"{lens}.{k}"] = {"vs_noise": _separated(v, noise[lens][k]),
                                  "vs_silence": _separated(v, silence[lens][k])}
    kad = lambda r: r["distribution"]["kad"]
    out["distribution.kad"] = {"vs_noise": kad(real)["ci"][1] < kad(noise)["ci"][0],
                               "vs_silence": kad(real)["ci"][1] < kad(silence)["ci"][0]}
    for k, v in out.items():
        v["broken"] = not (v["vs_noise"] or v["vs_silence"])
    return out


# ---- output -------------------------------------------------------------------------------------------------------
def _fmt(m: dict, scale: float = 1.0, digits: int = 2) -> str:
    mean, (lo, hi) = m["mean"] * scale, m["ci"]
    if not math.isfinite(mean):
        return f"{mean}"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def format_table(report: dict) -> str:
    """The report as text tables (pandas): level and notes per row, then distribution and adherence, then the
    per-prompt means where rows have them (:func:`markdown_prompt_table`)."""
    import pandas as pd

    lv, nt, ds = [], [], []
    for r in report["rows"]:
        L, N, D, A = r["level"], r["notes"], r["distribution"], r["adherence"]
        lv.append({"row": r["name"], "N win": r["windows"], "pieces": r["pieces"], "LUFS": _fmt(L["lufs"], 1, 1),
                   "true peak dBTP": _fmt(L["true_peak_dbtp"], 1, 1),
                   "clipped %": _fmt(L["clipped_fraction"], 100, 3), "LRA LU": _fmt(L["lra_lu"], 1, 1)})
        nt.append({"row": r["name"], "notes/s": _fmt(N["notes_per_s"]), "median len s": _fmt(N["median_length_s"]),
                   "polyphony": _fmt(N["mean_polyphony"]), "active": _fmt(N["active_fraction"]),
                   "pitch range": _fmt(N["pitch_range"], 1, 1), "key clarity": _fmt(N["key_clarity"]),
                   **({"frame seam": _fmt(r["seams"]["frame"]), "block seam": _fmt(r["seams"]["block"])}
                      if "seams" in r else {})})
        kad, fd = D["kad"], D["fd_inf"]
        ds.append({"row": r["name"], "N": D["n_x"], "N ref": D["n_y"], "KAD dim": kad.get("dim", D["dim"]),
                   "KAD x100": _fmt({"mean": kad["value"], "ci": kad["ci"]}, 100, 3),
                   "FD-inf dim": fd.get("dim", ""), "FD-inf": _fmt({"mean": fd["value"], "ci": fd["ci"]}, 1, 2),
                   "instrument hit": _fmt(A["instrument"]),
                   "sketch corr": _fmt(A["sketch_contour"]) if "sketch_contour" in A else "",
                   "NN ratio": f"{A['memorisation_nn_ratio']:.2f}"})
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        parts = ["level (mean over windows [95% bootstrap CI])", pd.DataFrame(lv).to_string(index=False), "",
                 "notes (in-house transcriber)", pd.DataFrame(nt).to_string(index=False), "",
                 "distribution vs the reference (one embedding per window) and adherence",
                 pd.DataFrame(ds).to_string(index=False)]
    tr = report.get("transcriber") or {}
    if "onset_f1" in tr:
        parts[3] = (f"notes (in-house transcriber: note-onset F1 {tr['onset_f1']:.3f}, frame F1 {tr['frame_f1']:.3f} "
                    f"on {tr.get('works', '?')} {tr.get('split', 'val')} works, mir_eval)")
    if any(r.get("by_prompt") for r in report["rows"]):
        parts += ["", "per prompt (means over each prompt's windows)", markdown_prompt_table(report)]
    broken = [k for k, v in report.get("checks", {}).items() if v["broken"]]
    parts.append("")
    parts.append("lenses that do not separate real music from noise and silence: " + (", ".join(broken) or "none"))
    return "\n".join(parts)


def _signed(x: float) -> str:
    return f"{x:+.1f}" if math.isfinite(x) else f"{x}"


def _mean(m: dict, digits: int = 2) -> str:
    """The mean alone (a column whose CI the table leaves out)."""
    return _fmt({"mean": m["mean"], "ci": (math.nan, math.nan)}, 1, digits)


def markdown_table(report: dict, extra: dict[str, dict[str, str]] | None = None) -> str:
    """The report's headline columns as one GitHub-markdown table (the README's quality tables are printed by this).

    Args:
        report: an ``evaluate`` report (or its JSON).
        extra: optional per-row extra cells, ``{row name: {column: text}}`` (for example the CPU time of a run);
            the columns are appended in first-seen order, blank where a row has none.

    Returns:
        A header, a rule and one line per row: N windows, LUFS, true peak, clipped %, notes/s, median note length,
        polyphony, pitch range, key clarity, frame/block seam ratios, KAD x100 (mean [95% CI] where it has one),
        instrument hit rate and sketch contour correlation.
    """
    extra = extra or {}
    cols = list(dict.fromkeys(c for cells in extra.values() for c in cells))
    head = ["row", *cols, "N win", "LUFS", "true peak dBTP", "clipped %", "notes/s", "median note s", "polyphony",
            "pitch range", "key clarity", "frame seam", "block seam", "KAD x100", "instrument hit", "sketch corr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        L, N, D, A = r["level"], r["notes"], r["distribution"], r["adherence"]
        seams = r.get("seams") or {}
        kad = D["kad"]
        cells = [r["name"], *(extra.get(r["name"], {}).get(c, "") for c in cols), str(r["windows"]),
                 _fmt(L["lufs"], 1, 1), _signed(L["true_peak_dbtp"]["mean"]),
                 _fmt(L["clipped_fraction"], 100, 3), _fmt(N["notes_per_s"]), _fmt(N["median_length_s"]),
                 _fmt(N["mean_polyphony"]), _mean(N["pitch_range"], 1), _mean(N["key_clarity"]),
                 _mean(seams["frame"]) if "frame" in seams else "–",
                 _mean(seams["block"]) if "block" in seams else "–",
                 _fmt({"mean": kad["value"], "ci": kad["ci"]}, 100, 2),
                 _mean(A["instrument"]) if "instrument" in A else "–",
                 _fmt(A["sketch_contour"]) if "sketch_contour" in A else "–"]
        lines.append("| " + " | ".join(c.replace("-", "−") if c[:1] == "-" else c for c in cells) + " |")
    return "\n".join(lines)


#: the per-prompt columns of :func:`markdown_prompt_table`: (``by_prompt`` key, header, digits)
PROMPT_COLUMNS = (("level.lufs", "LUFS", 1), ("notes.notes_per_s", "notes/s", 2),
                  ("notes.mean_polyphony", "polyphony", 2), ("notes.pitch_range", "pitch range", 1))


def markdown_prompt_table(report: dict, width: int = 48) -> str:
    """Prompt by prompt, each row that has per-prompt values (the prompts' own pieces and the systems): mean LUFS,
    notes per second, polyphony and pitch range over the prompt's windows, as one GitHub-markdown table.

    Args:
        report: an ``evaluate`` report (or its JSON).
        width: prompts are cut to this many characters.

    Returns:
        A header, a rule and one line per (prompt, row); "–" where a prompt's windows had no finite value.

    Raises:
        UsageError: no row of the report has per-prompt values (a report from before they were kept, or prompts
            that are no validation captions and no system row).
    """
    rows = [r for r in report["rows"] if r.get("by_prompt")]
    if not rows:
        raise UsageError("this report keeps no per-prompt values (rerun lmdm eval to get them)")
    head = ["prompt", "row", *(h for _, h, _ in PROMPT_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, prompt in enumerate(report.get("prompts", [])):
        short = prompt if len(prompt) <= width else prompt[: width - 1] + "…"
        for r in rows:
            cells = [f"{i}: {short}", r["name"]]
            for key, _, digits in PROMPT_COLUMNS:
                vals = r["by_prompt"].get(key, [])
                v = vals[i] if i < len(vals) else None
                cells.append("–" if v is None else f"{v:.{digits}f}".replace("-", "−"))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Per-lens bars with 95% CIs, one bar per row; returns the written PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = report["rows"]
    names = [r["name"] for r in rows]
    panels = [("level", "lufs", "integrated loudness (LUFS)"), ("level", "clipped_fraction", "clipped fraction"),
              ("notes", "mean_polyphony", "mean polyphony"), ("notes", "notes_per_s", "notes per second"),
              ("notes", "median_length_s", "median note length (s)"), ("notes", "key_clarity", "key clarity")]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7))
    for ax, (lens, key, title) in zip(axes.flat, panels):
        means = [r[lens][key]["mean"] for r in rows]
        err = [[max(0.0, m - r[lens][key]["ci"][0]) if math.isfinite(r[lens][key]["ci"][0]) else 0 for m, r in
                zip(means, rows)], [max(0.0, r[lens][key]["ci"][1] - m) if math.isfinite(r[lens][key]["ci"][1])
                                    else 0 for m, r in zip(means, rows)]]
        shown = [m if math.isfinite(m) else np.nan for m in means]
        ax.bar(range(len(rows)), shown, yerr=err, capsize=3, color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=7)
    for ax, key, title in ((axes.flat[6], "kad", "KAD vs reference (x100)"), (axes.flat[7], "fd_inf", "FD-infinity")):
        d = [r["distribution"][key] for r in rows]
        s = 100 if key == "kad" else 1
        ax.bar(range(len(rows)), [x["value"] * s for x in d], capsize=3, color="tab:orange",
               yerr=[[max(0, (x["value"] - x["ci"][0]) * s) if math.isfinite(x["ci"][0]) else 0 for x in d],
                     [max(0, (x["ci"][1] - x["value"]) * s) if math.isfinite(x["ci"][1]) else 0 for x in d]])
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    path = out / "eval_lenses.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path, plot_histograms(report, out / "eval_histograms.png")]


def plot_histograms(report: dict, path: str | Path) -> Path:
    """Per row: the distribution of per-window mean polyphony, and the pitch-class histogram (share of the
    sounded seconds per pitch class). Rows without notes (silence) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if sum(r["histograms"]["pitch_class_seconds"]) > 0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4))
    bins = np.arange(0.75, 4.76, 0.25)
    for r in rows:
        ax1.hist(r["histograms"]["polyphony"], bins=bins, histtype="step", lw=1.5, density=True, label=r["name"])
        pcs = np.asarray(r["histograms"]["pitch_class_seconds"])
        ax2.plot(range(12), pcs / pcs.sum(), marker="o", label=r["name"])
    ax1.set_xlabel("mean polyphony of a window (sounding notes)")
    ax1.set_ylabel("density")
    ax1.set_title("polyphony per window", fontsize=9)
    ax2.set_xticks(range(12), ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"])
    ax2.set_ylabel("share of sounded seconds")
    ax2.set_title("pitch-class histogram", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
