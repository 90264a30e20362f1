"""A real render of two short corpus works: non-silent audio of the expected length, captions, split by work."""
import json

import numpy as np
import pandas as pd
import soundfile as sf

from lmdm.data.build import BuildConfig, build
from lmdm.data.captions import caption_variants
from lmdm.data.corpus import corpus_works, select_works, split_of
from lmdm.data.instruments import BY_NAME
from tests.conftest import TEST_WORKS


def test_render_two_real_works(real_data):
    df = pd.read_csv(real_data / "manifest.csv")
    assert sorted(df.work_id) == sorted(TEST_WORKS)
    for row in df.itertuples():
        audio, sr = sf.read(real_data / row.audio)
        assert sr == 16000 and audio.ndim == 1
        assert abs(len(audio) / sr - row.seconds) < 1e-3
        # cropped to 20 s of notes plus at most 1 s of release
        assert 5.0 < row.seconds <= 21.0
        rms = np.sqrt(np.mean(audio**2))
        assert 0.03 < rms < 0.2, rms  # normalised to about -20 dBFS
        assert np.isfinite(audio).all()
        assert row.instrument in BY_NAME
        assert row.instrument in row.caption and str(int(round(row.bpm))) in row.caption
        assert (real_data / row.midi).is_file()
    bach = df[df.collection == "bach"].iloc[0]
    assert "Johann Sebastian Bach" in bach.caption and "chorale" in bach.caption


def test_rerun_skips_existing_works(real_data):
    before = {p.name: p.stat().st_mtime_ns for p in (real_data / "audio").iterdir()}
    report = build(BuildConfig(out=str(real_data), work_ids=TEST_WORKS, max_seconds=20.0, jobs=1), progress=False)
    assert report.skipped_existing == 2 and report.built == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in (real_data / "audio").iterdir()}


def test_split_is_by_work_deterministic_and_stable():
    works = corpus_works()
    small = select_works(works, hours=2, seed=0, max_seconds=90, min_seconds=8)
    big = select_works(works, hours=4, seed=0, max_seconds=90, min_seconds=8)
    assert {w.work_id for w in small} <= {w.work_id for w in big}  # more hours extends the selection
    ids = [w.work_id for w in big]
    assert len(ids) == len(set(ids))  # each work once
    splits = {i: split_of(i, 0, 0.05) for i in ids}
    assert splits == {i: split_of(i, 0, 0.05) for i in ids}
    assert 0 < sum(s == "val" for s in splits.values()) < len(ids) * 0.15
    assert splits != {i: split_of(i, 1, 0.05) for i in ids}  # the seed matters


def test_caption_variants_include_the_short_prompt_form():
    row = {"label": "Bach chorale", "form": "chorale", "composer": "Johann Sebastian Bach", "key": "G major",
           "meter": "4/4", "bpm": 64, "instrument": "church organ"}
    v = caption_variants(row)
    assert "a slow Bach chorale on church organ" in v
    assert v[0].startswith("A slow chorale by Johann Sebastian Bach in G major")


def test_meta_rows_are_json_with_the_manifest_fields(real_data):
    rows = [json.loads(p.read_text()) for p in (real_data / "meta").glob("*.json")]
    assert {"work_id", "split", "caption", "instrument", "midi_route", "soundfont"} <= set(rows[0])


def test_prevailing_meter_ignores_one_beat_pickup_signatures():
    """Essen tunes open with 2/4 and switch to 1/4 for short bars; the corpus metadata calls them "1/4" (or "1/8")."""
    from music21 import meter, note, stream

    from lmdm.data.render import prevailing_meter

    def measure(sig):
        m = stream.Measure()
        if sig:
            m.timeSignature = meter.TimeSignature(sig)
        m.append(note.Note("C4", quarterLength=1.0))
        return m

    part = stream.Part([measure("2/4"), measure(None), measure("1/4"), measure("2/4"), measure(None), measure("6/8")])
    assert prevailing_meter(stream.Score([part])) == "2/4"
    only_pickups = stream.Part([measure("1/8"), measure(None)])
    assert prevailing_meter(stream.Score([only_pickups])) == "1/8"
    assert prevailing_meter(stream.Score([stream.Part([stream.Measure()])])) is None


def test_real_tune_whose_metadata_says_one_beat_gets_its_real_metre():
    from lmdm.data.render import parse_work, prevailing_meter

    work = next(w for w in corpus_works() if w.work_id == "essenFolksong__dva0__0118")
    assert work.meter == "1/4"  # what the corpus metadata says (and what captions used to print)
    assert prevailing_meter(parse_work(work)) == "2/4"
