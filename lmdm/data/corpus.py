"""Choosing real works from the music21 corpus (scores that ship inside the music21 wheel).

The corpus holds ~15,000 works by real composers and folk traditions. ``COLLECTIONS`` names the ones we render,
what a caption calls them, a plausible tempo range for scores without a metronome mark, and each collection's
share of the requested hours. :func:`select_works` walks every collection in a seeded order and takes works
until its share is full, so a larger ``--hours`` gives a superset of a smaller one (the build stays resumable).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from lmdm.errors import UsageError


@dataclass(frozen=True)
class Collection:
    """A corpus folder: caption ``label`` ("Bach chorale"), musical ``form``, default ``composer``, tempo range in
    quarter-note BPM used when the score has no metronome mark, and ``share`` of the total hours."""

    label: str
    form: str
    composer: str | None
    bpm: tuple[int, int]
    share: float


COLLECTIONS: dict[str, Collection] = {
    "bach": Collection("Bach chorale", "chorale", "Johann Sebastian Bach", (56, 84), 0.22),
    "palestrina": Collection("Palestrina mass", "Renaissance mass movement", "Giovanni Pierluigi da Palestrina", (100, 140), 0.09),
    "monteverdi": Collection("Monteverdi madrigal", "madrigal", "Claudio Monteverdi", (72, 104), 0.06),
    "josquin": Collection("Josquin motet", "Renaissance motet", "Josquin des Prez", (100, 140), 0.03),
    "trecento": Collection("trecento song", "medieval Italian song", None, (72, 110), 0.04),
    "essenFolksong": Collection("European folk song", "folk song", None, (80, 132), 0.14),
    "oneills1850": Collection("Irish dance tune", "Irish dance tune", None, (100, 140), 0.10),
    "airdsAirs": Collection("Scottish air", "Scottish air", None, (72, 120), 0.07),
    "ryansMammoth": Collection("fiddle tune", "fiddle tune", None, (96, 140), 0.08),
    "miscFolk": Collection("folk tune", "folk tune", None, (80, 126), 0.03),
    "mozart": Collection("Mozart string quartet", "string quartet movement", "Wolfgang Amadeus Mozart", (80, 132), 0.02),
    "haydn": Collection("Haydn string quartet", "string quartet movement", "Joseph Haydn", (80, 132), 0.01),
    "beethoven": Collection("Beethoven string quartet", "string quartet movement", "Ludwig van Beethoven", (60, 120), 0.01),
}


@dataclass(frozen=True)
class Work:
    """One work of the corpus: ``source_path`` (corpus-relative) and ``number`` (the tune within an opus file, or
    None) are what ``music21.corpus.parse`` needs; the rest is metadata for captions and hour planning."""

    work_id: str
    collection: str
    source_path: str
    number: int | None
    title: str
    composer: str | None
    meter: str | None
    locale: str | None
    quarter_length: float
    tempo_bpm: float | None  # the score's own first metronome mark, if any


# Score formats by preference when the corpus holds one work in several files; roman-numeral analyses (.rntxt)
# are harmonic analyses, not scores, and are never rendered.
_FORMAT_RANK = {"mxl": 0, "xml": 0, "musicxml": 0, "krn": 1, "abc": 2, "mid": 3, "midi": 3}

_TEMPO_RE = re.compile(r"=\s*([0-9]+(?:\.[0-9]+)?)")


def _work_id(collection: str, source_path: str, number: int | None) -> str:
    stem = source_path.split("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
    return f"{collection}__{stem}" + (f"__{number:04d}" if number is not None else "")


def corpus_works() -> list[Work]:
    """All works of the collections in ``COLLECTIONS``, from music21's metadata bundle (~2 s, no parsing).

    Each work appears once (``work_id`` is unique), in its preferred score format.
    """
    from music21 import corpus

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    bundle.read()
    entries = getattr(bundle, "_metadataEntries", None)
    entries = list(entries.values()) if entries is not None else list(bundle)
    works: dict[str, tuple[int, Work]] = {}
    for e in entries:
        md = e.metadata
        source = str(e.sourcePath)
        collection = source.split("/", 1)[0]
        rank = _FORMAT_RANK.get(source.rsplit(".", 1)[-1].lower())
        if md is None or collection not in COLLECTIONS or rank is None:
            continue
        tempo = None
        if md.tempoFirst:
            m = _TEMPO_RE.search(str(md.tempoFirst))
            tempo = float(m.group(1)) if m else None
        number = int(e.number) if e.number is not None else None
        title = md.bestTitle or source.rsplit("/", 1)[-1]
        work_id = _work_id(collection, source, number)
        if work_id in works and works[work_id][0] <= rank:
            continue  # the same work in a preferred format is already listed
        works[work_id] = rank, (
            Work(
                work_id=work_id,
                collection=collection,
                source_path=source,
                number=number,
                title=str(title),
                composer=md.composer,
                meter=md.timeSignatureFirst,
                locale=md.localeOfComposition,
                quarter_length=float(md.scoreQuarterLength or 0.0),
                tempo_bpm=tempo,
            )
        )
    return [w for _, w in works.values()]


def stable_unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts`` (sha256), independent of Python's hash seed."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def planned_bpm(work: Work, seed: int) -> float:
    """The tempo a work is rendered at: its own metronome mark, else a seeded draw from its collection's range."""
    if work.tempo_bpm:
        return float(work.tempo_bpm)
    lo, hi = COLLECTIONS[work.collection].bpm
    return float(round(lo + (hi - lo) * stable_unit(seed, "bpm", work.work_id)))


def estimated_seconds(work: Work, seed: int, max_seconds: float) -> float:
    """Estimated rendered length in seconds (score length at the planned tempo, cropped to ``max_seconds``)."""
    return min(max_seconds, work.quarter_length * 60.0 / planned_bpm(work, seed))


def select_works(works: list[Work], hours: float, seed: int, max_seconds: float, min_seconds: float) -> list[Work]:
    """Works to render for ``hours`` of audio in total, each collection filling its ``share``.

    Within a collection the order is a seeded permutation, so the selection for more hours extends the selection
    for fewer. Works estimated shorter than ``min_seconds`` are skipped (too short for a training window).

    Raises:
        UsageError: ``hours`` is not positive.
    """
    if not hours > 0:
        raise UsageError(f"--hours must be positive, got {hours}")
    by_coll: dict[str, list[Work]] = {}
    for w in works:
        by_coll.setdefault(w.collection, []).append(w)
    chosen = []
    for name, coll in COLLECTIONS.items():
        budget = hours * 3600.0 * coll.share
        pool = sorted(by_coll.get(name, []), key=lambda w: stable_unit(seed, "order", w.work_id))
        total = 0.0
        for w in pool:
            if total >= budget:
                break
            sec = estimated_seconds(w, seed, max_seconds)
            if sec < min_seconds:
                continue
            chosen.append(w)
            total += sec
    return chosen


def split_of(work_id: str, seed: int, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` for a work: a seeded hash of the work id, so the split is by work, deterministic,
    and unchanged when more works are added."""
    return "val" if stable_unit(seed, "split", work_id) < val_fraction else "train"
