"""The statistics of a drift study (issue 13): how far each window of a stream is from real music by each lens of
``lmdm drift`` (``lmdm.metrics.report``), the median over a system's streams per minute with a bootstrap CI, and the
first-versus-last-minute verdict; the per-minute markdown tables and the figure.

**Distance from real** of a window, per lens ``m``, against the real-music band ``(mean, sd)`` of ``m`` (real
validation windows of the same length, :func:`lmdm.metrics.report.load_baseline`)::

    d = |value - mean| / max(sd, MIN_SD[m])          level and notes lenses (two-sided z distance)
    d = max(0, kad - mean) / max(sd, MIN_SD["kad"])  KAD (one-sided: KAD is itself a distance to real music, and
                                                     a window closer to the reference than real music is not drift)

so ``d`` is in real standard deviations and about 68% of real windows have ``d <= 1`` (95% ``d <= 2`` for a normal
spread). ``MIN_SD`` keeps a lens real music never moves on measurable: the data set never clips, so its clipped
fraction has ``sd = 0``; there ``d`` counts steps of 0.1% clipped samples. A window a lens cannot measure is as far
as the table goes, :data:`MAX_DISTANCE`: its value is -inf (the loudness of silence) or NaN (no notes transcribed,
so no median length, polyphony or key clarity; every real window of the band has them). Without a band (no data
set, or fewer than two real windows) ``d`` is NaN.

**Per minute**: the median over streams of the window's values and of its distances, each with a
percentile-bootstrap 95% CI over streams (``lmdm.eval.suite.median_ci``); the median, not the mean, so that one
runaway stream shows as a wide CI rather than moving the curve.

**Verdict** per lens, first window ``f`` versus last window ``l`` (with 60 s windows: the first and the last minute):

* ``ratio = median_l(d) / median_f(d)`` with a paired bootstrap CI over streams (0 / 0 counts as 1); the issue's
  target is ``ratio <= MAX_RATIO`` (1.1);
* a ratio of two tiny distances is unstable (0.1 sd -> 0.3 sd is a ratio of 3 and still real music), so the
  verdict also says whether the last minute is **inside the real band**: ``median_l(d) <= BAND_SD`` (2 sd);
* a lens **flags drift** only when both fail: the last minute is more than 10% further from real than the first
  *and* outside the band.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lmdm.errors import UsageError
from lmdm.eval.suite import median_ci
from lmdm.metrics.report import LABELS, METRICS

#: The issue's target: the last minute at most 10% further from real than the first, on each lens.
MAX_RATIO = 1.1
#: The last minute is inside the real band when its median distance is at most this many real sd.
BAND_SD = 2.0
#: The smallest sd a distance divides by, in each lens's units (real music never clips: sd 0).
MIN_SD = {"lufs": 0.05, "true_peak_dbtp": 0.05, "clipped_fraction": 1e-3, "notes_per_s": 0.01,
          "median_length_s": 0.005, "mean_polyphony": 0.01, "key_clarity": 0.005, "kad": 1e-4}
#: The distance of a non-finite value (silence), and the largest one reported.
MAX_DISTANCE = 1e3


def distance(value: float, band: Mapping | None, metric: str) -> float:
    """Distance from real music of one window's ``value`` of ``metric``, in real sd (see the module docstring).

    Args:
        band: ``{"mean", "std", "windows"}`` of the metric over real windows; None or fewer than two windows = no
            band (NaN).

    Raises:
        UsageError: ``metric`` is not one of :data:`lmdm.metrics.report.METRICS`.
    """
    if metric not in MIN_SD:
        raise UsageError(f"unknown drift metric {metric!r}; the metrics are {', '.join(METRICS)}")
    if not band or band.get("windows", 0) < 2 or not math.isfinite(band["mean"]):
        return float("nan")
    if value is None or not math.isfinite(value):
        return MAX_DISTANCE
    z = (value - band["mean"]) / max(band["std"], MIN_SD[metric])
    return float(min(max(z, 0.0) if metric == "kad" else abs(z), MAX_DISTANCE))


def _ratio(last: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``last / first`` elementwise with 0 / 0 = 1 and x / 0 = inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(last, np.float64) / np.asarray(first, np.float64)
    return np.where((np.asarray(first) == 0) & (np.asarray(last) == 0), 1.0, r)


def first_last(first: Sequence[float], last: Sequence[float], n_boot: int, rng: np.random.Generator) -> dict:
    """The verdict of one lens from each stream's first- and last-window distances (``(n_streams,)`` each).

    Returns:
        ``first`` and ``last`` (``median_ci`` dicts), ``ratio`` (``value``, paired-bootstrap ``ci``),
        ``meets_ratio`` (ratio <= :data:`MAX_RATIO`), ``last_in_band`` (median last distance <= :data:`BAND_SD`)
        and ``drift`` (both false); the three flags are None when no stream has both distances.
    """
    f, l = np.asarray(first, np.float64), np.asarray(last, np.float64)
    ok = np.isfinite(f) & np.isfinite(l)
    f, l = f[ok], l[ok]
    out = {"first": median_ci(f, n_boot, rng), "last": median_ci(l, n_boot, rng)}
    if len(f) == 0:
        return {**out, "ratio": {"value": float("nan"), "ci": [float("nan")] * 2}, "meets_ratio": None,
                "last_in_band": None, "drift": None}
    ratio = float(_ratio(np.median(l), np.median(f)))
    idx = rng.integers(0, len(f), size=(n_boot, len(f)))
    boots = _ratio(np.median(l[idx], axis=1), np.median(f[idx], axis=1))
    # no interpolation: a resample whose first distances are all 0 has an infinite ratio
    lo, hi = ((np.percentile(boots, 2.5, method="lower"), np.percentile(boots, 97.5, method="higher"))
              if len(f) > 1 else (ratio, ratio))
    meets, in_band = ratio <= MAX_RATIO, float(np.median(l)) <= BAND_SD
    return {**out, "ratio": {"value": ratio, "ci": [float(lo), float(hi)]}, "meets_ratio": bool(meets),
            "last_in_band": bool(in_band), "drift": bool(not meets and not in_band)}


def aggregate(streams: Sequence[Sequence[Mapping]], real_music: Mapping, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-window medians and the first/last verdict of one system.

    Args:
        streams: per stream, its window rows (``lmdm.metrics.report.window_rows``: ``start_s``, ``end_s`` and every
            metric); all streams have the same windows.
        real_music: the band of each metric (``Baseline.real_music``; empty = no band, distances NaN).
        n_boot: bootstrap resamples (over streams) of every CI.

    Returns:
        ``n_streams``, ``windows`` (per window: ``start_s``, ``end_s``, ``value`` and ``distance``, each
        ``{metric: median_ci}``) and ``verdict`` (``{metric: first_last(...)}``), plus ``drift_lenses`` (the lenses
        that flag drift) and ``tail`` (:func:`level_tail`: what the medians hide, the streams that clip).

    Raises:
        UsageError: no stream, or streams with different windows.
    """
    if not streams or not streams[0]:
        raise UsageError("a drift aggregate needs at least one stream of at least one window")
    spans = [[(r["start_s"], r["end_s"]) for r in s] for s in streams]
    if any(s != spans[0] for s in spans):
        raise UsageError(f"the streams of a system must have the same windows, got {sorted({len(s) for s in spans})} "
                         "windows")
    rng = np.random.default_rng(seed)
    dist = {m: np.array([[distance(r[m], real_music.get(m), m) for r in s] for s in streams]) for m in METRICS}
    windows = []
    for k, (start, end) in enumerate(spans[0]):
        windows.append({"start_s": start, "end_s": end,
                        "value": {m: median_ci([s[k][m] for s in streams], n_boot, rng) for m in METRICS},
                        "distance": {m: median_ci(dist[m][:, k], n_boot, rng) for m in METRICS}})
    verdict = {m: first_last(dist[m][:, 0], dist[m][:, -1], n_boot, rng) for m in METRICS}
    return {"n_streams": len(streams), "windows": windows, "verdict": verdict,
            "drift_lenses": [m for m in METRICS if verdict[m]["drift"]], "tail": level_tail(streams)}


def level_tail(streams: Sequence[Sequence[Mapping]]) -> dict:
    """What a median over streams cannot show: a few streams that run away in level. A median over 12 streams stays
    at 0% clipped while three of them clip a quarter of their samples for minutes (the drift study of ARC-Forcing's
    student, README "Drift over 10 minutes").

    Args:
        streams: per stream, its window rows (each with ``lufs`` and ``clipped_fraction``).

    Returns:
        ``streams_clipping`` (streams with a sample at or above full scale in any window), ``windows_clipping`` (such
        windows, over all streams), ``windows`` (all windows), ``loudest_window_lufs`` and
        ``most_clipped_window`` (the largest clipped fraction of any window, 0..1).
    """
    clipped = [[r["clipped_fraction"] > 0 for r in s] for s in streams]
    lufs = [r["lufs"] for s in streams for r in s if math.isfinite(r["lufs"])]
    return {"streams_clipping": sum(any(c) for c in clipped), "windows_clipping": sum(map(sum, clipped)),
            "windows": sum(map(len, clipped)), "loudest_window_lufs": max(lufs, default=float("nan")),
            "most_clipped_window": max(r["clipped_fraction"] for s in streams for r in s)}


def _g(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def minute_table(systems: Mapping[str, dict], real_music: Mapping | None = None) -> str:
    """Markdown: one row per system and window (``minute`` = the window's end in minutes), one column per lens
    (median over streams), and a first row with the real band (mean ± sd) when given."""
    head = "| system | minute | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 2)]
    if real_music:
        lines.append("| real music (mean ± sd) | any | " + " | ".join(
            f"{_g(real_music[m]['mean'])} ± {_g(real_music[m]['std'])}" if m in real_music else "n/a"
            for m in METRICS) + " |")
    for label, agg in systems.items():
        for w in agg["windows"]:
            lines.append(f"| {label} | {w['end_s'] / 60:.3g} | " + " | ".join(
                _g(w["value"][m]["median"]) for m in METRICS) + " |")
    return "\n".join(lines)


def verdict_table(systems: Mapping[str, dict]) -> str:
    """Markdown: per system and lens, the first- and last-window distance from real (median over streams, 95% CI),
    the ratio last / first (paired-bootstrap CI), whether it meets the issue's target, whether the last window is
    inside the real band, and whether the lens flags drift."""
    head = (f"| system | lens | first d [95% CI] | last d [95% CI] | ratio [95% CI] | ratio <= {MAX_RATIO} | "
            f"last in band (d <= {BAND_SD:g}) | drift |")
    lines = [head, "|" + " --- |" * 8]
    yes = {True: "yes", False: "no", None: "n/a"}
    for label, agg in systems.items():
        for m in METRICS:
            v = agg["verdict"][m]
            ci = lambda d: f"{_g(d['median'])} [{_g(d['ci'][0])}, {_g(d['ci'][1])}]"
            r = v["ratio"]
            lines.append(f"| {label} | {m} | {ci(v['first'])} | {ci(v['last'])} | {_g(r['value'])} "
                         f"[{_g(r['ci'][0])}, {_g(r['ci'][1])}] | {yes[v['meets_ratio']]} | {yes[v['last_in_band']]} "
                         f"| {'**DRIFT**' if v['drift'] else yes[v['drift']]} |")
    return "\n".join(lines)


def plot_study(systems: Mapping[str, dict], real_music: Mapping, path: str | Path, title: str = "") -> Path:
    """One panel per lens: per system the median over streams per window (at the window's middle, minutes) with its
    95% CI as a ribbon; behind every curve the real band, mean ± 1 sd dark grey and ± :data:`BAND_SD` sd light grey.
    Returns ``path`` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax, m in zip(axes.flat, METRICS):
        real = real_music.get(m) if real_music else None
        if real and real.get("windows") and math.isfinite(real["mean"]):
            mu, sd = real["mean"], real["std"]
            ax.axhspan(mu - BAND_SD * sd, mu + BAND_SD * sd, color="grey", alpha=0.12, lw=0,
                       label=f"real music ±{BAND_SD:g} sd")
            ax.axhspan(mu - sd, mu + sd, color="grey", alpha=0.3, lw=0, label=f"real music ±1 sd (N={real['windows']})")
            ax.axhline(mu, color="grey", lw=0.8)
        for label, agg in systems.items():
            x = [(w["start_s"] + w["end_s"]) / 120 for w in agg["windows"]]
            med = [w["value"][m]["median"] for w in agg["windows"]]
            lo = [w["value"][m]["ci"][0] for w in agg["windows"]]
            hi = [w["value"][m]["ci"][1] for w in agg["windows"]]
            (line,) = ax.plot(x, med, "o-", ms=3, label=f"{label} (n={agg['n_streams']})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(LABELS[m], fontsize=9)
        ax.set_xlabel("time in the stream (min)")
        ax.grid(alpha=0.3)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    rows = math.ceil(len(names) / 4)
    fig.tight_layout(rect=(0, 0.035 * rows + 0.01, 1, 0.97 if title else 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
