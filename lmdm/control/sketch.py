"""Sketch-based synthesis: a drawn melody contour becomes control features per latent frame.

A sketch is what a drawing widget sends: strokes of ``(time_seconds, height)`` points, height in [0, 1] from the
bottom of the canvas to the top. :func:`sketch_features` resamples it to the latent frame rate, maps height to a
MIDI pitch range and optionally snaps it to a scale. The result feeds the same control pathway as jamming
(``lmdm.control.features``): melody (pitch + voiced) and rhythm (an onset where a stroke starts or the snapped pitch
changes) are present, dynamics are left to the model.

JSON form (``lmdm sketch SKETCH.json``)::

    {"duration": 8.0, "pitch_range": [55, 79], "scale": "C major",
     "strokes": [[[0.0, 0.4], [0.5, 0.6], [1.2, 0.55]], [[2.0, 0.3], [3.5, 0.8]]]}

Repairs (documented, never a crash): points outside ``[0, duration] x [0, 1]`` are clipped; a stroke drawn
backwards in time is put into time order; non-finite points are dropped; empty strokes are ignored; a sketch
with no strokes gives no melody control (the model plays freely) and a warning. Where strokes overlap in time
the later stroke wins.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmdm.config import read_json
from lmdm.control.features import pitch_to_feature
from lmdm.errors import LmdmError

SCALES = {
    "chromatic": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "minor pentatonic": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
}
TONICS = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6, "G": 7, "G#": 8,
          "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11}


class SketchError(LmdmError, ValueError):
    """A sketch that cannot be read; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class Sketch:
    """Strokes of ``(seconds, height)`` points; see the module docstring.

    Attributes:
        strokes: each an ``(points, 2)`` float array, time-ordered after :func:`parse_sketch`'s repairs.
        duration: length of the canvas in seconds.
        pitch_range: MIDI pitches at height 0 and height 1.
        scale: e.g. "C major", "A minor pentatonic", or None for a continuous (unquantised) contour.
    """

    strokes: tuple[np.ndarray, ...]
    duration: float
    pitch_range: tuple[float, float] = (55.0, 79.0)
    scale: str | None = "C major"
    repairs: list[str] = field(default_factory=list, compare=False)


def parse_scale(scale: str | None) -> tuple[int, tuple[int, ...]] | None:
    """``"A minor"`` -> ``(9, minor intervals)``; None or "" -> None (continuous pitch).

    Raises:
        SketchError: unknown tonic or mode (the message lists the accepted ones).
    """
    if scale is None or scale == "":
        return None
    if not isinstance(scale, str):
        raise SketchError(f"scale must be text such as 'D dorian' (or null for continuous pitch), got {scale!r}")
    parts = scale.strip().split(maxsplit=1)
    tonic, mode = parts[0], (parts[1] if len(parts) > 1 else "major")
    if tonic not in TONICS or mode not in SCALES:
        raise SketchError(f"unknown scale {scale!r}; use '<tonic> <mode>' with tonic in {sorted(TONICS)} and mode "
                          f"in {sorted(SCALES)}, e.g. 'D dorian'")
    return TONICS[tonic], SCALES[mode]


def quantize(midi: np.ndarray, scale: str | None) -> np.ndarray:
    """Snap fractional MIDI pitches to the nearest pitch of ``scale`` (None: unchanged)."""
    parsed = parse_scale(scale)
    if parsed is None:
        return np.asarray(midi, dtype=np.float32)
    tonic, steps = parsed
    base = np.floor(np.asarray(midi, dtype=np.float64))
    candidates = np.stack([base + k for k in range(-2, 3)], -1)
    ok = np.isin((candidates - tonic) % 12, steps)
    dist = np.where(ok, np.abs(candidates - np.asarray(midi)[..., None]), np.inf)
    return np.take_along_axis(candidates, dist.argmin(-1)[..., None], -1)[..., 0].astype(np.float32)


def parse_sketch(data: dict) -> Sketch:
    """Validate and repair a sketch given as a JSON-like dict.

    Raises:
        SketchError: not an object, strokes not a list of point lists, bad duration, pitch range or scale.
    """
    if not isinstance(data, dict):
        raise SketchError(f"a sketch is a JSON object with 'strokes', got {type(data).__name__}")
    unknown = sorted(set(data) - {"strokes", "duration", "pitch_range", "scale"})
    if unknown:
        raise SketchError(f"unknown sketch key(s) {unknown}; valid keys are: duration, pitch_range, scale, strokes")
    strokes_in = data.get("strokes", [])
    if not isinstance(strokes_in, list):
        raise SketchError("'strokes' must be a list of strokes, each a list of [seconds, height] points")
    repairs: list[str] = []
    strokes = []
    for i, stroke in enumerate(strokes_in):
        try:
            pts = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError) as e:
            raise SketchError(f"stroke {i} is not a list of [seconds, height] points ({e})") from e
        finite = np.isfinite(pts).all(1)
        if not finite.all():
            repairs.append(f"stroke {i}: dropped {int((~finite).sum())} non-finite point(s)")
            pts = pts[finite]
        if len(pts) == 0:
            continue
        if np.any(np.diff(pts[:, 0]) < 0):
            repairs.append(f"stroke {i}: points went backwards in time; put into time order")
            pts = pts[np.argsort(pts[:, 0], kind="stable")]
        strokes.append(pts)
    times = [p[:, 0].max() for p in strokes]
    duration = data.get("duration", max(times, default=0.0))
    if (isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration)
            or duration < 0 or duration > 3600):
        raise SketchError(f"duration must be a number of seconds in [0, 3600], got {duration!r}")
    pr = data.get("pitch_range", (55, 79))
    if (not isinstance(pr, (list, tuple)) or len(pr) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pr)
            or not 0 <= pr[0] < pr[1] <= 127):
        raise SketchError(f"pitch_range must be [low, high] MIDI pitches with 0 <= low < high <= 127, got {pr!r}")
    scale = data.get("scale", "C major")
    parse_scale(scale)
    clipped = []
    for i, p in enumerate(strokes):
        c = np.stack([np.clip(p[:, 0], 0, duration), np.clip(p[:, 1], 0, 1)], 1)
        if not np.array_equal(c, p):
            repairs.append(f"stroke {i}: points outside the canvas clipped")
        clipped.append(c.astype(np.float32))
    if not clipped:
        repairs.append("no strokes: no melody control, the model plays freely")
    for r in repairs:
        warnings.warn(f"sketch repaired: {r}", stacklevel=2)
    return Sketch(tuple(clipped), float(duration), (float(pr[0]), float(pr[1])), scale or None, repairs)


def load_sketch(path: str | Path) -> Sketch:
    """Read a sketch JSON file.

    Raises:
        SketchError: missing file, invalid JSON or an invalid sketch.
    """
    return parse_sketch(read_json(path, SketchError, "sketch file"))


def sketch_pitch(sketch: Sketch, frames: int, frame_rate: float) -> np.ndarray:
    """Drawn MIDI pitch per latent frame ``(frames,)`` (snapped to the scale), 0 where nothing is drawn."""
    lo, hi = sketch.pitch_range
    centres = (np.arange(frames) + 0.5) / frame_rate
    out = np.zeros(frames, dtype=np.float32)
    for pts in sketch.strokes:  # later strokes overwrite earlier ones
        t0, t1 = pts[0, 0], pts[-1, 0]
        inside = (centres >= t0) & (centres <= t1) if t1 > t0 else np.abs(centres - t0) <= 0.5 / frame_rate
        if inside.any():
            h = np.interp(centres[inside], pts[:, 0], pts[:, 1]) if len(pts) > 1 else np.full(inside.sum(), pts[0, 1])
            out[inside] = quantize(lo + h * (hi - lo), sketch.scale)
    return out


def sketch_features(sketch: Sketch, frames: int, frame_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Control features of a sketch: ``(features (frames, 4), present (3,))``.

    Melody and rhythm are present when anything is drawn (onsets at stroke starts and at changes of the snapped
    pitch); dynamics are absent. An empty sketch has no group present.
    """
    pitch = sketch_pitch(sketch, frames, frame_rate)
    voiced = (pitch > 0).astype(np.float32)
    onset = np.zeros(frames, dtype=np.float32)
    prev = np.concatenate([[0.0], pitch[:-1]])
    onset[(pitch > 0) & (np.abs(pitch - prev) > 0.5)] = 1.0
    feats = np.stack([np.where(voiced > 0, pitch_to_feature(pitch), 0.0), voiced, onset,
                      np.zeros(frames, dtype=np.float32)], 1).astype(np.float32)
    drawn = bool(voiced.any())
    return feats, np.array([drawn, drawn, False])


def contour_correlation(drawn_midi: np.ndarray, tracked_midi: np.ndarray, min_frames: int = 8) -> float:
    """Pearson correlation between a drawn pitch contour and one tracked from audio, over frames voiced in both
    (values 0 mean unvoiced). Strict: a tracker's octave error counts against it (folding octaves would let a
    flat melody "follow" any drawing that spans an octave).

    Returns:
        correlation in [-1, 1], or NaN if fewer than ``min_frames`` frames are voiced in both.
    """
    d, t = np.asarray(drawn_midi, np.float64), np.asarray(tracked_midi, np.float64)
    n = min(len(d), len(t))
    d, t = d[:n], t[:n]
    both = (d > 0) & (t > 0)
    if both.sum() < min_frames:
        return float("nan")
    d, t = d[both], t[both]
    if d.std() < 1e-6 or t.std() < 1e-6:
        return float("nan")
    return float(np.corrcoef(d, t)[0, 1])


def sketch_from_notes(notes: list[tuple[float, float, int]], pitch_range: tuple[float, float], start: float,
                      duration: float) -> dict:
    """A sketch dict from the top voice of some notes (a melody drawn note by note), for held-out evaluation.

    Consecutive notes closer than 50 ms join one stroke; pitches map linearly into ``pitch_range`` heights.
    """
    lo, hi = pitch_range
    top: dict[float, tuple[float, int]] = {}
    for s, e, p in notes:
        if start <= s < start + duration and (s not in top or p > top[s][1]):
            top[s] = (min(e, start + duration), p)
    strokes, cur, last_end = [], [], None
    for s in sorted(top):
        e, p = top[s]
        h = float(np.clip((p - lo) / (hi - lo), 0, 1))
        if last_end is not None and s - last_end > 0.05 and cur:
            strokes.append(cur)
            cur = []
        cur += [[s - start, h], [max(e - start - 1e-3, s - start), h]]
        last_end = e
    if cur:
        strokes.append(cur)
    return {"duration": duration, "pitch_range": list(pitch_range), "scale": None, "strokes": strokes}


def synthetic_sketches(n: int, duration: float, seed: int = 0) -> list[dict]:
    """Drawn-like test sketches that no training piece contains: arches, zigzags, steps and glides, with gaps
    between strokes (seeded)."""
    rng = np.random.default_rng(seed)
    shapes = []
    for i in range(n):
        kind = ("arch", "zigzag", "steps", "glide")[i % 4]
        strokes, t = [], 0.0
        while t < duration - 0.5:
            length = float(rng.uniform(1.0, 2.5))
            ts = np.linspace(t, min(t + length, duration), 12)
            u = (ts - ts[0]) / max(ts[-1] - ts[0], 1e-6)
            base = float(rng.uniform(0.2, 0.6))
            if kind == "arch":
                h = base + 0.35 * np.sin(np.pi * u)
            elif kind == "zigzag":
                h = base + 0.3 * np.abs(((u * 3) % 2) - 1)
            elif kind == "steps":
                h = base + 0.1 * np.floor(u * 4)
            else:
                h = base + 0.4 * u * (1 if rng.random() < 0.5 else -1) + 0.2
            strokes.append([[float(a), float(np.clip(b, 0, 1))] for a, b in zip(ts, h)])
            t = ts[-1] + float(rng.uniform(0.15, 0.5))
        shapes.append({"duration": duration, "pitch_range": [60, 84], "scale": "C major", "strokes": strokes})
    return shapes


def heldout_melody_sketches(data_dir: str | Path, n: int, duration: float, seed: int = 0) -> list[dict]:
    """Sketches traced from the melodies (top voice) of validation-split works, which training never saw."""
    import pandas as pd

    from lmdm.control.features import midi_notes

    df = pd.read_csv(Path(data_dir) / "manifest.csv", keep_default_na=False)
    val = df[df.split == "val"].sample(frac=1.0, random_state=seed)
    out = []
    for row in val.itertuples():
        notes = midi_notes(str(Path(data_dir) / row.midi))
        if not notes:
            continue
        start = min(s for s, _, _ in notes)
        sk = sketch_from_notes(notes, (48, 84), start, duration)
        if sum(len(s) for s in sk["strokes"]) >= 8:
            out.append(sk)
        if len(out) == n:
            break
    return out
