"""The notes lens: note statistics against hand-computed answers, the transcriber's targets, decoding and scores
against their references (pretty_midi, mir_eval), its training on the one loop, and the bundled model's floor."""
import json
import math

import numpy as np
import pytest
import torch

from lmdm.errors import UsageError
from lmdm.eval import notes as N
from lmdm.eval import transcriber as T

TRIAD = [(0.0, 2.0, 60), (0.0, 2.0, 64), (0.0, 2.0, 67)]
C_SCALE = [(0.5 * i, 0.5 * (i + 1), p) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]


# ---- note statistics: known answers ----------------------------------------------------------------------------
def test_triad_held_two_seconds():
    s = N.note_stats(TRIAD, 0.0, 2.0)
    assert (s.n_notes, s.notes_per_s, s.median_length_s, s.mean_polyphony, s.active_fraction) == (3, 1.5, 2.0, 3.0, 1.0)
    assert N.pitch_range(TRIAD, 0.0, 2.0, q=(0, 100)) == 7.0
    assert s.key == "C major"
    wide = N.note_stats(TRIAD, 0.0, 4.0)  # silence around the chord halves the active fraction, not the polyphony
    assert (wide.mean_polyphony, wide.active_fraction, wide.notes_per_s) == (3.0, 0.5, 0.75)


def test_polyphony_is_time_weighted_and_counts_unisons_once():
    assert N.mean_polyphony([(0, 2, 60), (1, 2, 64)], 0, 2) == 1.5  # 1 pitch for 1 s, 2 pitches for 1 s
    assert N.mean_polyphony([(0, 2, 60), (1, 3, 60)], 0, 3) == 1.0  # two voices in unison sound as one
    assert N.active_fraction([(0, 1, 60), (2, 3, 62)], 0, 4) == 0.5
    assert N.mean_polyphony([(0, 1, 60), (1, 2, 62)], 0, 2) == 1.0  # touching notes never overlap


def test_window_clipping_and_counting_by_onset():
    notes = [(-1.0, 1.0, 60), (0.5, 3.0, 62)]
    assert N.notes_per_second(notes, 0, 2) == 0.5           # only the onset inside counts
    assert N.median_note_length(notes, 0, 2) == 2.5         # its unclipped length
    assert N.active_fraction(notes, 0, 2) == 1.0
    assert N.mean_polyphony(notes, 0, 2) == pytest.approx((0.5 * 1 + 0.5 * 2 + 1.0 * 1) / 2.0)


def test_pitch_range_percentiles():
    notes = [(i, i + 1, 60 + i) for i in range(10)]         # pitches 60..69, one note each
    assert N.pitch_range(notes, 0, 10) == pytest.approx((60 + 0.95 * 9) - (60 + 0.05 * 9))  # 8.1
    assert N.pitch_range(notes, 0, 10, q=(0, 100)) == 9.0
    assert N.pitch_range([(0, 1, 60)] * 3, 0, 1) == 0.0


def test_key_clarity_of_the_profiles_themselves():
    # durations proportional to the K-K profile of G major / A minor: correlation 1 with that key
    g_major = [(0.0, float(w), 60 + (7 + k) % 12) for k, w in enumerate(N.KK_MAJOR)]
    a_minor = [(0.0, float(w), 60 + (9 + k) % 12) for k, w in enumerate(N.KK_MINOR)]
    for notes, key in ((g_major, "G major"), (a_minor, "A minor")):
        r, name = N.key_clarity(notes, 0.0, 10.0)
        assert (round(r, 12), name) == (1.0, key)


def test_key_clarity_of_a_c_major_scale_matches_a_slow_reference():
    r, key = N.key_clarity(C_SCALE, 0.0, 4.0)
    hist = np.array([2, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1]) * 0.5  # seconds per pitch class (C twice)
    assert key == "C major"
    assert r == pytest.approx(np.corrcoef(hist, N.KK_MAJOR)[0, 1], abs=1e-12)
    assert 0.85 < r < 1.0
    rng = np.random.default_rng(0)
    h = rng.random(12)
    ref = [np.corrcoef(h, np.roll(p, k))[0, 1] for p in (N.KK_MAJOR, N.KK_MINOR) for k in range(12)]
    np.testing.assert_allclose(N.key_correlations(h), ref, atol=1e-12)


def test_empty_windows_and_bad_input():
    s = N.note_stats([], 0, 1)
    assert (s.n_notes, s.notes_per_s, s.active_fraction, s.key) == (0, 0.0, 0.0, "")
    assert all(math.isnan(v) for v in (s.median_length_s, s.mean_polyphony, s.pitch_range, s.key_clarity))
    for bad in ([(1.0, 0.5, 60)], [(0, 1, 128)], [(0, 1, 60.5)], [(0, float("nan"), 60)], [(0, 1)]):
        with pytest.raises(UsageError):
            N.note_stats(bad, 0, 1)
    with pytest.raises(UsageError):
        N.note_stats(TRIAD, 2, 2)
    assert [w.start_s for w in N.windowed_note_stats(C_SCALE, 10, 4)] == [0, 4]
    assert [w.start_s for w in N.windowed_note_stats(C_SCALE, 10, 4, hop_s=2)] == [0, 2, 4, 6]


# ---- the transcriber's pure functions --------------------------------------------------------------------------
FPS = 62.5


def test_decode_inverts_the_targets():
    # a re-struck key (two notes back to back), an overlapping note, a one-frame note; times on the frame grid
    notes = [(0, 25, 60), (25, 50, 60), (10, 75, 64), (62, 63, 21)]
    notes = [(a / FPS, b / FPS, p) for a, b, p in notes]
    frames, onsets = T.note_targets(notes, 100, FPS)
    got = T.decode_notes(onsets.astype(float), frames.astype(float), FPS)
    assert got == sorted(notes, key=lambda n: (n[0], n[2]))
    assert all(type(x) is float for n in got for x in n[:2]) and all(type(n[2]) is int for n in got)


def test_note_targets_follow_pretty_midi(real_data):
    import pretty_midi

    from lmdm.control.features import midi_notes

    midi = min((real_data / "midi").glob("*.mid"))
    roll = pretty_midi.PrettyMIDI(str(midi)).get_piano_roll(fs=FPS)[21:109].T > 0
    notes = midi_notes(str(midi))
    frames, onsets = T.note_targets(notes, roll.shape[0], FPS)
    np.testing.assert_array_equal(frames, roll)
    starts = {(int(s * FPS), p - 21) for s, e, p in notes}  # voices in unison start one onset
    assert set(zip(*np.nonzero(onsets))) == starts and not (onsets & ~frames).any()


def test_evaluate_notes_known_answers():
    ref = [(0.0, 1.0, 60), (1.0, 2.0, 62)]
    assert T.evaluate_notes(ref, ref)["onset_f1"] == 1.0 and T.evaluate_notes(ref, ref)["frame_f1"] == 1.0
    late = [(s + 0.04, e, p) for s, e, p in ref]                       # inside the 50 ms tolerance
    assert T.evaluate_notes(ref, late)["onset_f1"] == 1.0
    later = [(s + 0.06, e, p) for s, e, p in ref]
    assert T.evaluate_notes(ref, later)["onset_f1"] == 0.0
    half = T.evaluate_notes(ref, [(0.0, 1.0, 60)])                     # one of two notes: P = 1, R = 1/2
    assert half["onset_f1"] == pytest.approx(2 / 3) and half["frame_f1"] == pytest.approx(2 / 3, abs=0.01)
    assert T.evaluate_notes(ref, [])["onset_f1"] == 0.0


# ---- training on the one loop, saving, loading, transcribing ---------------------------------------------------
def tiny_cfg(data, run, export, **kw):
    base = {"data": str(data), "run_dir": str(run), "export_dir": str(export),
            "model": T.TranscriberConfig(width=32, dilations=(1, 2)), "steps": 4, "batch_size": 2, "crop_frames": 64,
            "warmup_steps": 2, "log_every": 1, "val_every": 2, "ckpt_every": 2, "val_batches": 1}
    base.update(kw)
    return T.TranscriberTrainConfig(**base)


def test_training_step_shapes_resume_and_export(real_data, tmp_path):
    cfg = tiny_cfg(real_data, tmp_path / "run", tmp_path / "export")
    data = T.load_note_set(real_data, cfg.codec, progress=False)
    mel, fr, on = data.sample(data.valid_starts("train", 64), 2, 64, cfg.onset_frames, torch.Generator())
    assert mel.shape == (2, 64, 128) and fr.shape == on.shape == (2, 64, 88)
    out = T.train_transcriber(cfg, progress=False, evaluate=False)
    assert out["step"] == 4 and not (tmp_path / "export" / "eval").exists()
    with pytest.raises(T.TranscriberError):  # a fresh run into a folder with checkpoints
        T.train_transcriber(cfg, progress=False, evaluate=False)
    out = T.train_transcriber(None, resume=True, run_dir=tmp_path / "run", overrides={"steps": 6}, progress=False)
    assert out["step"] == 6 and set(out["eval"]) >= {"onset_f1", "frame_f1"}
    tr = T.load_transcriber(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["info"]["step"] == 6
    onset, frame = tr.probabilities(torch.randn(300, 128), segment=128, context=16)
    assert onset.shape == frame.shape == (300, 88) and 0 <= onset.min() and frame.max() <= 1
    mel = torch.randn(300, 128, generator=torch.Generator().manual_seed(0))
    whole, seg = tr.probabilities(mel, segment=1000)[0], tr.probabilities(mel, segment=128, context=16)[0]
    np.testing.assert_allclose(whole, seg, atol=1e-5)  # segments with enough context equal one pass
    notes = T.transcribe(np.zeros((8000, 2), dtype=np.float32), 8000, tr)
    assert isinstance(notes, list)


def test_missing_transcriber_is_a_user_error(tmp_path):
    with pytest.raises(T.TranscriberError, match="no transcriber"):
        T.load_transcriber(tmp_path)


# ---- the bundled model -----------------------------------------------------------------------------------------
# The two fixture works (20 s each, rendered on harp) are not in the 10-hour data set the bundled model was trained on,
# so they are held out. Measured: onset F1 0.90 (bwv286 0.80, the folk ballad 1.00), 0.91 through the codec and
# Griffin-Lim; validation split 0.84. The floor leaves room for another FluidSynth or soundfont build and still
# fails a broken model (an untrained one scores about 0).
BUNDLED_FLOOR = 0.75


@pytest.mark.skipif(not T.default_transcriber_path().is_dir(), reason="no bundled transcriber")
def test_bundled_transcriber_hears_the_fixture_notes(real_data):
    out = T.evaluate_transcriber(real_data, split="train", progress=False)  # the fixture's manifest calls both "train"
    assert out["works"] == 2 and out["onset_f1"] > BUNDLED_FLOOR, out
