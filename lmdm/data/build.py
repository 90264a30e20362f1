"""``lmdm data build``: render real music from the music21 corpus into a training set.

Layout of the output folder (git-ignored)::

    OUT/audio/<work_id>.flac   16 kHz mono, loudness-normalised
    OUT/midi/<work_id>.mid     the MIDI that was rendered (instrument and tempo applied, cropped)
    OUT/meta/<work_id>.json    one manifest row; written last, so its presence marks a finished work
    OUT/manifest.csv           all finished works (pandas.read_csv), rebuilt from meta/ at the end of each run
    OUT/failures.csv           works of the last run that failed, with the stage and the error

Re-running skips works whose meta file exists (resumable); the split is by work and deterministic for a seed.
"""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from lmdm.atomic import atomic_file, write_text
from lmdm.audio.io import save_audio
from lmdm.data.captions import caption, tempo_word
from lmdm.data.corpus import COLLECTIONS, Work, corpus_works, planned_bpm, select_works, split_of, stable_unit
from lmdm.data.instruments import INSTRUMENTS
from lmdm.errors import UsageError


@dataclass(frozen=True)
class BuildConfig:
    """Settings of a data build.

    Attributes:
        hours: total audio to build (train + validation), in hours; shared across collections by their ``share``.
        out: output folder.
        seed: seeds the work order, tempo and instrument draws and the split.
        sample_rate: render rate in Hz (16 kHz: the codec's rate; enough for the GM SoundFont's timbres).
        max_seconds: longer works are cropped to this many seconds.
        min_seconds: works estimated shorter than this are skipped.
        val_fraction: fraction of works (not clips) in the validation split.
        soundfont: SoundFont path, or None for the first found (see ``render.find_soundfont``).
        jobs: worker processes.
        work_ids: build exactly these work ids instead of an hours-based selection (tests, debugging).
    """

    hours: float = 4.0
    out: str = "data/music"
    seed: int = 0
    sample_rate: int = 16000
    max_seconds: float = 90.0
    min_seconds: float = 8.0
    val_fraction: float = 0.05
    soundfont: str | None = None
    jobs: int = 2
    work_ids: tuple[str, ...] = ()


@dataclass
class BuildReport:
    """Counts of one build run."""

    selected: int = 0
    built: int = 0
    skipped_existing: int = 0
    failed: int = 0
    midi_fallback: int = 0
    hours_total: float = 0.0
    failures: list[dict] | None = None

    def summary(self) -> str:
        """One line of counts for the end of a build."""
        return (
            f"selected {self.selected} works: built {self.built}, already there {self.skipped_existing}, "
            f"failed {self.failed}; MIDI via the notes fallback: {self.midi_fallback}; "
            f"data set now holds {self.hours_total:.2f} h"
        )


def instrument_for(work_id: str, seed: int):
    """The instrument a work is rendered with (seeded, uniform over ``INSTRUMENTS``)."""
    return INSTRUMENTS[int(stable_unit(seed, "instrument", work_id) * len(INSTRUMENTS))]


def _label(work: Work) -> str:
    if work.collection == "essenFolksong" and work.locale and "China" in work.locale:
        return "Chinese folk song"
    return COLLECTIONS[work.collection].label


def build_one(work: Work, cfg: BuildConfig, soundfont: str) -> dict:
    """Render one work; returns its manifest row. Raises on failure (the caller records the stage)."""
    import pretty_midi  # noqa: F401  (fail early in the worker if missing)

    from lmdm.data.render import (
        finish_audio,
        key_name,
        parse_work,
        prepare_midi,
        prevailing_meter,
        render_midi,
        score_to_midi,
    )

    out = Path(cfg.out)
    inst = instrument_for(work.work_id, cfg.seed)
    bpm = planned_bpm(work, cfg.seed)
    try:
        score = parse_work(work)
    except Exception as e:
        raise RuntimeError(f"parse: {type(e).__name__}: {e}") from e
    key = key_name(score)
    pm, route = score_to_midi(score, bpm, has_own_tempo=work.tempo_bpm is not None)
    pm, end = prepare_midi(pm, inst.program, cfg.max_seconds)
    midi_path = out / "midi" / f"{work.work_id}.mid"
    with atomic_file(midi_path) as tmp_mid:
        pm.write(str(tmp_mid))
    audio = finish_audio(render_midi(midi_path, soundfont, cfg.sample_rate), cfg.sample_rate, end)
    audio_path = out / "audio" / f"{work.work_id}.flac"
    save_audio(audio_path, audio, cfg.sample_rate)
    coll = COLLECTIONS[work.collection]
    row = {
        "work_id": work.work_id,
        "collection": work.collection,
        "source_path": work.source_path,
        "number": work.number,
        "title": work.title,
        "composer": coll.composer or work.composer,
        "label": _label(work),
        "form": coll.form,
        "key": key,
        "meter": prevailing_meter(score),
        "bpm": bpm,
        "tempo_word": tempo_word(bpm),
        "instrument": inst.name,
        "program": inst.program,
        "seconds": round(len(audio) / cfg.sample_rate, 3),
        "split": split_of(work.work_id, cfg.seed, cfg.val_fraction),
        "midi_route": route,
        "soundfont": Path(soundfont).name,
        "sample_rate": cfg.sample_rate,
        "audio": f"audio/{work.work_id}.flac",
        "midi": f"midi/{work.work_id}.mid",
        "seed": cfg.seed,
    }
    row["caption"] = caption(row)
    write_text(out / "meta" / f"{work.work_id}.json", json.dumps(row, indent=1))
    return row


def _build_one_safe(work: Work, cfg: BuildConfig, soundfont: str) -> tuple[Work, dict | None, str | None]:
    try:
        return work, build_one(work, cfg, soundfont), None
    except Exception as e:  # one bad score must not stop the build; it is counted and reported
        msg = str(e)
        return work, None, msg if ":" in msg[:12] else f"render: {type(e).__name__}: {msg}"


def write_manifest(out: Path) -> "pandas.DataFrame":  # noqa: F821
    """Rebuild ``manifest.csv`` from every ``meta/*.json`` in ``out``; returns the table."""
    import pandas as pd

    rows = [json.loads(p.read_text()) for p in sorted((out / "meta").glob("*.json"))]
    df = pd.DataFrame(rows)
    if "number" in df:
        df["number"] = df["number"].astype("Int64")
    with atomic_file(out / "manifest.csv") as tmp:
        df.to_csv(tmp, index=False)
    return df


def build(cfg: BuildConfig, progress: bool = True) -> BuildReport:
    """Build (or resume building) the data set described by ``cfg``; see the module docstring for the layout.

    Raises:
        FileNotFoundError: FluidSynth or the SoundFont is missing (before any work starts).
        ValueError: ``cfg.work_ids`` names works that are not in the corpus collections.
    """
    from tqdm.auto import tqdm

    from lmdm.data.render import find_fluidsynth, find_soundfont

    find_fluidsynth()
    soundfont = str(find_soundfont(cfg.soundfont))
    out = Path(cfg.out)
    for sub in ("audio", "midi", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    works = corpus_works()
    if cfg.work_ids:
        by_id = {w.work_id: w for w in works}
        missing = [i for i in cfg.work_ids if i not in by_id]
        if missing:
            raise UsageError(f"unknown work id(s) {missing}; ids look like 'bach__bwv101.7' (see manifest.csv)")
        selected = [by_id[i] for i in cfg.work_ids]
    else:
        selected = select_works(works, cfg.hours, cfg.seed, cfg.max_seconds, cfg.min_seconds)
    report = BuildReport(selected=len(selected), failures=[])
    todo = [w for w in selected if not (out / "meta" / f"{w.work_id}.json").is_file()]
    report.skipped_existing = len(selected) - len(todo)
    bar = tqdm(total=len(todo), desc="rendering", unit="work", disable=not progress)
    if cfg.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=cfg.jobs) as pool:
            futures = [pool.submit(_build_one_safe, w, cfg, soundfont) for w in todo]
            for fut in as_completed(futures):
                _account(report, *fut.result())
                bar.update(1)
                bar.set_postfix(failed=report.failed, fallback=report.midi_fallback)
    else:
        for w in todo:
            _account(report, *_build_one_safe(w, cfg, soundfont))
            bar.update(1)
    bar.close()
    df = write_manifest(out)
    report.hours_total = float(df["seconds"].sum() / 3600) if len(df) else 0.0
    import pandas as pd

    with atomic_file(out / "failures.csv") as tmp:
        pd.DataFrame(report.failures, columns=["work_id", "source_path", "number", "error"]).to_csv(tmp, index=False)
    return report


def _account(report: BuildReport, work: Work, row: dict | None, err: str | None) -> None:
    if row is None:
        report.failed += 1
        report.failures.append(
            {"work_id": work.work_id, "source_path": work.source_path, "number": work.number, "error": err}
        )
        return
    report.built += 1
    report.midi_fallback += row["midi_route"] == "notes"
