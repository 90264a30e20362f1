"""The level tail of a drift study, stream by stream: what its medians hide.

`lmdm drift-study` reports per-minute medians over streams and counts the streams that clip; a burst in one stream of
twelve, or a few clipped samples a minute in three, stays invisible in a median. This reads a study's stream files
(``OUT_DIR/streams/*.json``, written by ``lmdm drift-study``) and prints, per system, the streams that clip, the
clipped minutes and samples, the worst minute (fraction of its samples at full scale), the loudest and the median minute (LUFS,
pyloudnorm via ``lmdm.eval.level``) and, for a system streamed through a level guard
(``lmdm.streaming.level_guard``), the blocks it turned down and its largest cut; then one line per stream. With
``--plot``: one panel per system, every stream's loudness per minute (one line each) with a mark on each minute
that clips, sized by its clipped samples, and the real-music band the study measured (mean ± 2 sd).

Usage:
    .venv/bin/python scripts/level_tail.py runs/drift-study-guard [--plot docs/level-guard.png]
    .venv/bin/python scripts/level_tail.py runs/ds-heldout-c runs/ds-heldout-a --plot docs/level-heldout.png

Several folders (studies of the same prompts and seeds, split over runs) print and plot as one study; the real-music
band is the first folder's.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_streams(out_dir: Path) -> dict[str, list[dict]]:
    """The stream records of a study folder, by system label, in file order (prompt, then seed)."""
    files = sorted((out_dir / "streams").glob("*.json"))
    if not files:
        raise SystemExit(f"{out_dir}/streams holds no stream file: run `lmdm drift-study` with this out_dir first")
    by = defaultdict(list)
    for f in files:
        record = json.loads(f.read_text())
        by[record["settings"]["system"]["label"]].append(record)
    return dict(by)


def tail(records: list[dict], sample_rate: float = 16000) -> dict:
    """A system's tail: ``streams``, ``streams_clipping``, ``clipped_minutes``, ``minutes``, ``clipped_samples``
    (each window's clipped fraction times its samples at ``sample_rate`` Hz, summed), ``worst_minute``
    (fraction), ``loudest_lufs``, ``median_lufs``, and ``guard`` (blocks, cut_blocks, max_cut_db) or None."""
    clipped = [[w["clipped_fraction"] for w in r["rows"]] for r in records]
    samples = sum(round(w["clipped_fraction"] * (w["end_s"] - w["start_s"]) * sample_rate)
                  for r in records for w in r["rows"])
    lufs = [w["lufs"] for r in records for w in r["rows"] if math.isfinite(w["lufs"])]
    guards = [r["guard"] for r in records if r.get("guard")]
    guard = None if not guards else {"blocks": sum(g["blocks"] for g in guards),
                                     "cut_blocks": sum(g["cut_blocks"] for g in guards),
                                     "max_cut_db": max(g["max_cut_db"] for g in guards)}
    return {"streams": len(records), "streams_clipping": sum(any(c > 0 for c in s) for s in clipped),
            "clipped_minutes": sum(c > 0 for s in clipped for c in s), "minutes": sum(map(len, clipped)),
            "clipped_samples": samples,
            "worst_minute": max(c for s in clipped for c in s), "loudest_lufs": max(lufs),
            "median_lufs": float(np.median(lufs)), "guard": guard}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path, nargs="+", help="a drift study's out_dir (or several)")
    ap.add_argument("--plot", default=None, help="write the per-stream figure here (PNG)")
    ap.add_argument("--sample-rate", type=float, default=16000,
                    help="the streams' sample rate in Hz, to count clipped samples (default 16000, the codec's)")
    args = ap.parse_args()
    systems = {}
    for out_dir in args.out_dir:
        for label, records in read_streams(out_dir).items():
            if label in systems:
                raise SystemExit(f"system {label!r} is in more than one of the folders; give each study once")
            systems[label] = records
    for label, records in systems.items():
        t = tail(records, args.sample_rate)
        g = t["guard"]
        print(f"{label}: {t['streams_clipping']} of {t['streams']} streams clip, {t['clipped_minutes']} of "
              f"{t['minutes']} minutes, {t['clipped_samples']} clipped samples; worst minute {100 * t['worst_minute']:.3g}%; loudest minute "
              f"{t['loudest_lufs']:.1f} LUFS, median minute {t['median_lufs']:.1f}"
              + ("" if g is None else f"; guard turned down {g['cut_blocks']} of {g['blocks']} blocks, the most by "
                                      f"{g['max_cut_db']:.1f} dB"))
        for r in records:
            s, rows = r["settings"], r["rows"]
            print(f"    {s['prompt'][:40]:40s} seed {s['seed']}: LUFS " + " ".join(f"{w['lufs']:.0f}" for w in rows)
                  + f"; clipped minutes {sum(w['clipped_fraction'] > 0 for w in rows)}, samples "
                  + str(tail([r], args.sample_rate)["clipped_samples"])
                  + ("" if not r.get("guard") else f"; cut {r['guard']['cut_blocks']} of {r['guard']['blocks']}"))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        study = args.out_dir[0] / "study.json"
        band = json.loads(study.read_text())["real_music"].get("lufs") if study.is_file() else None
        cols = min(2, len(systems))
        rows = -(-len(systems) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.4 * rows), sharey=True, squeeze=False)
        for ax, (label, records) in zip(axes.flat, systems.items()):  # a stream keeps its colour in every panel
            t = tail(records)
            for r in records:
                minutes = np.array([w["end_s"] / 60 for w in r["rows"]])
                lufs = np.array([w["lufs"] for w in r["rows"]])
                clip = np.array([w["clipped_fraction"] for w in r["rows"]])
                line, = ax.plot(minutes, lufs, lw=0.8, alpha=0.8)
                hit = clip > 0  # marker area grows with the log of the clipped fraction (1e-6 .. 0.5)
                ax.scatter(minutes[hit], lufs[hit], s=12 + 12 * (np.log10(clip[hit]) + 6), marker="x",
                           color=line.get_color(), zorder=3)
            if band:
                ax.axhspan(band["mean"] - 2 * band["std"], band["mean"] + 2 * band["std"], color="0.85", zorder=0)
            ax.set_title(f"{label}\n{t['streams_clipping']} of {t['streams']} streams clip, "
                         f"{t['clipped_minutes']} clipped minute{'' if t['clipped_minutes'] == 1 else 's'}", fontsize=9)
            ax.set_xlabel("minute of the stream")
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("LUFS per minute; x = clips")
        for ax in axes.flat[len(systems):]:
            ax.set_visible(False)
        fig.suptitle("every stream of the drift study, minute by minute (grey: real music, mean ± 2 sd)", fontsize=10)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
