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
