"""Note statistics of a window of music, from a note list: the "notes" lens of ``lmdm eval`` (DESIGN.md section 7).

A note list is ``[(onset_s, offset_s, midi_pitch), ...]`` as written by :func:`lmdm.control.features.midi_notes` for a
score and by :func:`lmdm.eval.transcriber.transcribe` for audio. Every statistic is a pure function of the notes
and a window ``[start_s, end_s)``; notes are clipped to the window for everything measured in time (polyphony,
active fraction, key clarity) and counted by onset for everything counted per note (rate, length, range).

==================  =========================================================================================
statistic           definition
==================  =========================================================================================
notes_per_s         onsets inside the window / window length
median_length_s     median of ``offset - onset`` (unclipped) of the notes whose onset is inside the window
mean_polyphony      time-weighted mean number of sounding *pitches* while at least one sounds (two voices in
                    unison count once, as one hears and as a transcriber reports them)
active_fraction     fraction of the window in which at least one pitch sounds
pitch_range         semitones between the 5th and 95th percentile of the onset pitches (one sample per note,
                    numpy's linear interpolation); robust to a stray transcribed note, where min..max
                    (``q=(0, 100)``) is not
key_clarity         Krumhansl-Schmuckler key finding: the Pearson correlation of the duration-weighted
                    pitch-class histogram with the best of the 24 rotated Krumhansl-Kessler profiles, and that key
==================  =========================================================================================

Statistics that need notes (length, range, key) are NaN (key ``""``) for a window without them; rates and
fractions are 0 there.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmdm.errors import UsageError

# Krumhansl & Kessler 1982 probe-tone ratings, as tabled in Krumhansl 1990, "Cognitive Foundations of Musical
# Pitch", ch. 2 (the profiles of the Krumhansl-Schmuckler key-finding algorithm, ch. 4); index 0 = the tonic.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

Note = tuple[float, float, int]


def as_note_array(notes: Sequence[Note] | np.ndarray) -> np.ndarray:
    """Check a note list and return it as a float64 array ``(n, 3)`` of onset_s, offset_s, MIDI pitch.

    Raises:
        UsageError: not ``(n, 3)``; a time not finite; an offset before its onset; a pitch not an integer in
            0..127.
    """
    a = np.asarray(notes, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 3))
    if a.ndim != 2 or a.shape[1] != 3:
        raise UsageError(f"notes must be (onset_s, offset_s, midi_pitch) triples, got an array of shape {a.shape}")
    if not np.isfinite(a).all():
        raise UsageError("note times and pitches must be finite numbers")
    if (a[:, 1] < a[:, 0]).any():
        i = int(np.argmax(a[:, 1] < a[:, 0]))
        raise UsageError(f"note {i} ends before it starts: onset {a[i, 0]} s, offset {a[i, 1]} s")
    p = a[:, 2]
    if (p != np.round(p)).any() or p.min() < 0 or p.max() > 127:
        raise UsageError("note pitches must be integer MIDI numbers in 0..127")
    return a


def _window(start_s: float, end_s: float) -> float:
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or end_s <= start_s:
        raise UsageError(f"the window needs finite start_s < end_s, got [{start_s}, {end_s})")
    return end_s - start_s


def _in_window(a: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """Notes whose onset lies in ``[start_s, end_s)``."""
    return a[(a[:, 0] >= start_s) & (a[:, 0] < end_s)]


def _clipped(a: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """Notes clipped to the window, those with nothing left dropped."""
    c = a.copy()
    c[:, 0] = np.clip(c[:, 0], start_s, end_s)
    c[:, 1] = np.clip(c[:, 1], start_s, end_s)
    return c[c[:, 1] > c[:, 0]]


def _pitch_union(a: np.ndarray) -> np.ndarray:
    """Overlapping notes of one pitch merged into one interval (unison voices count once)."""
    out = []
    for p in np.unique(a[:, 2]):
        iv = a[a[:, 2] == p][:, :2]
        iv = iv[np.argsort(iv[:, 0])]
        s, e = iv[0]
        for s2, e2 in iv[1:]:
            if s2 <= e:
                e = max(e, e2)
            else:
                out.append((s, e, p))
                s, e = s2, e2
        out.append((s, e, p))
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def _sounding_profile(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment lengths and the number of sounding pitches in each, from a sweep over note boundaries."""
    u = _pitch_union(a)
    times = np.concatenate([u[:, 0], u[:, 1]])
    steps = np.concatenate([np.ones(len(u)), -np.ones(len(u))])
    order = np.lexsort((steps, times))  # at equal times, ends (-1) before starts (+1)
    times, count = times[order], np.cumsum(steps[order])
    return np.diff(times), count[:-1]


def notes_per_second(notes: Sequence[Note], start_s: float, end_s: float) -> float:
    """Onsets per second inside ``[start_s, end_s)``.

    Raises:
        UsageError: a bad note list (:func:`as_note_array`) or an empty window.
    """
    dur = _window(start_s, end_s)
    return len(_in_window(as_note_array(notes), start_s, end_s)) / dur


def median_note_length(notes: Sequence[Note], start_s: float, end_s: float) -> float:
    """Median ``offset - onset`` in seconds of the notes starting inside the window (NaN if none).

    Raises:
        UsageError: a bad note list or an empty window.
    """
    _window(start_s, end_s)
    a = _in_window(as_note_array(notes), start_s, end_s)
    return float(np.median(a[:, 1] - a[:, 0])) if len(a) else float("nan")


def mean_polyphony(notes: Sequence[Note], start_s: float, end_s: float) -> float:
    """Time-weighted mean number of distinct sounding pitches while at least one sounds (NaN if none sounds).

    A C major triad held for 2 s gives 3, whatever the window around it.

    Raises:
        UsageError: a bad note list or an empty window.
    """
    _window(start_s, end_s)
    a = _clipped(as_note_array(notes), start_s, end_s)
    if not len(a):
        return float("nan")
    seg, count = _sounding_profile(a)
    on = count > 0
    return float((seg[on] * count[on]).sum() / seg[on].sum())


def active_fraction(notes: Sequence[Note], start_s: float, end_s: float) -> float:
    """Fraction of ``[start_s, end_s)`` in which at least one note sounds, in [0, 1].

    Raises:
        UsageError: a bad note list or an empty window.
    """
    dur = _window(start_s, end_s)
    a = _clipped(as_note_array(notes), start_s, end_s)
    if not len(a):
        return 0.0
    seg, count = _sounding_profile(a)
    return float(seg[count > 0].sum() / dur)


def pitch_range(notes: Sequence[Note], start_s: float, end_s: float, q: tuple[float, float] = (5.0, 95.0)) -> float:
    """Semitones between the ``q[0]``-th and ``q[1]``-th percentiles of the pitches of the notes starting in the
    window (one sample per note, linear interpolation); ``q=(0, 100)`` gives max - min. NaN if no note.

    Raises:
        UsageError: a bad note list, an empty window, or ``q`` not ``0 <= q[0] <= q[1] <= 100``.
    """
    _window(start_s, end_s)
    if not 0 <= q[0] <= q[1] <= 100:
        raise UsageError(f"q must satisfy 0 <= q[0] <= q[1] <= 100, got {q}")
    a = _in_window(as_note_array(notes), start_s, end_s)
    if not len(a):
        return float("nan")
    lo, hi = np.percentile(a[:, 2], q)
    return float(hi - lo)


def pitch_class_histogram(notes: Sequence[Note], start_s: float, end_s: float) -> np.ndarray:
    """``(12,)`` seconds sounded per pitch class (C = 0) inside the window (durations clipped to it; unison
    voices count once).

    Raises:
        UsageError: a bad note list or an empty window.
    """
    _window(start_s, end_s)
    a = _clipped(as_note_array(notes), start_s, end_s)
    h = np.zeros(12)
    if len(a):
        u = _pitch_union(a)
        np.add.at(h, u[:, 2].astype(int) % 12, u[:, 1] - u[:, 0])
    return h


def key_correlations(histogram: np.ndarray) -> np.ndarray:
    """Pearson correlation of a pitch-class histogram with the 24 rotated Krumhansl-Kessler profiles.

    Args:
        histogram: ``(12,)`` weights per pitch class, C = 0.

    Returns:
        ``(24,)``: index ``k < 12`` is the major key on pitch class ``k``, ``12 + k`` the minor key on ``k``; NaN
        where the histogram is constant (no key information).

    Raises:
        UsageError: ``histogram`` is not 12 finite numbers.

    Source: Krumhansl 1990, "Cognitive Foundations of Musical Pitch", ch. 4 (the Krumhansl-Schmuckler algorithm).
    """
    h = np.asarray(histogram, dtype=np.float64)
    if h.shape != (12,) or not np.isfinite(h).all():
        raise UsageError(f"histogram must be 12 finite numbers, got shape {h.shape}")
    hc = h - h.mean()
    norm_h = np.sqrt((hc ** 2).sum())
    out = np.full(24, np.nan)
    if norm_h == 0:
        return out
    for mode, prof in enumerate((KK_MAJOR, KK_MINOR)):
        for k in range(12):
            p = np.roll(prof, k) - prof.mean()  # the profile of the key on pitch class k
            out[12 * mode + k] = (hc * p).sum() / (norm_h * np.sqrt((p ** 2).sum()))
    return out


def key_name(index: int) -> str:
    """Name of key ``index`` of :func:`key_correlations` ("C major", "A minor", ...)."""
    return f"{PITCH_CLASSES[index % 12]} {'major' if index < 12 else 'minor'}"


def key_clarity(notes: Sequence[Note], start_s: float, end_s: float) -> tuple[float, str]:
    """Krumhansl-Schmuckler key clarity of the window: ``(best correlation in [-1, 1], its key name)``, or
    ``(nan, "")`` when the pitch-class histogram is constant (no note sounds, or all twelve classes equally).

    Source: Krumhansl 1990, "Cognitive Foundations of Musical Pitch", ch. 4.

    Raises:
        UsageError: a bad note list or an empty window.
    """
    r = key_correlations(pitch_class_histogram(notes, start_s, end_s))
    if np.isnan(r).all():
        return float("nan"), ""
    best = int(np.nanargmax(r))
    return float(r[best]), key_name(best)


@dataclass(frozen=True)
class NoteStats:
    """The note statistics of one window (the module table defines each).

    Attributes:
        start_s, end_s: the window, seconds.
        n_notes: onsets inside the window.
        notes_per_s, median_length_s, mean_polyphony, active_fraction, pitch_range, key_clarity: as tabled.
        key: the best-fitting key of ``key_clarity`` ("" if none).
    """

    start_s: float
    end_s: float
    n_notes: int
    notes_per_s: float
    median_length_s: float
    mean_polyphony: float
    active_fraction: float
    pitch_range: float
    key_clarity: float
    key: str


def note_stats(notes: Sequence[Note], start_s: float, end_s: float) -> NoteStats:
    """All statistics of the window ``[start_s, end_s)`` of a note list.

    Raises:
        UsageError: a bad note list or an empty window.
    """
    a = as_note_array(notes)
    clarity, key = key_clarity(a, start_s, end_s)
    return NoteStats(start_s=float(start_s), end_s=float(end_s), n_notes=len(_in_window(a, start_s, end_s)),
                     notes_per_s=notes_per_second(a, start_s, end_s),
                     median_length_s=median_note_length(a, start_s, end_s),
                     mean_polyphony=mean_polyphony(a, start_s, end_s),
                     active_fraction=active_fraction(a, start_s, end_s),
                     pitch_range=pitch_range(a, start_s, end_s), key_clarity=clarity, key=key)


def windowed_note_stats(notes: Sequence[Note], duration_s: float, window_s: float,
                        hop_s: float | None = None) -> list[NoteStats]:
    """:func:`note_stats` of consecutive windows ``[k hop, k hop + window)`` that fit inside ``[0, duration_s)``.

    Args:
        notes: the note list of the whole piece.
        duration_s: length of the audio the notes came from, seconds.
        window_s: window length, seconds.
        hop_s: distance between window starts (default ``window_s``: non-overlapping windows).

    Returns:
        one :class:`NoteStats` per window (none if ``duration_s < window_s``).

    Raises:
        UsageError: ``window_s`` or ``hop_s`` not positive, ``duration_s`` negative, or a bad note list.
    """
    hop_s = window_s if hop_s is None else hop_s
    if not (window_s > 0 and hop_s > 0 and duration_s >= 0):
        raise UsageError(f"need window_s > 0, hop_s > 0 and duration_s >= 0, got {window_s}, {hop_s}, {duration_s}")
    a = as_note_array(notes)
    n = math.floor((duration_s - window_s) / hop_s + 1e-9) + 1 if duration_s >= window_s else 0
    return [note_stats(a, k * hop_s, k * hop_s + window_s) for k in range(n)]
