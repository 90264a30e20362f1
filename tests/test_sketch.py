"""Sketches: repairs of bad input, resampling to frames, scale snapping, the following metric."""
import json

import numpy as np
import pytest

from lmdm.control.features import feature_to_pitch
from lmdm.control.sketch import (
    SketchError,
    contour_correlation,
    load_sketch,
    parse_sketch,
    quantize,
    sketch_features,
    sketch_from_notes,
    sketch_pitch,
    synthetic_sketches,
)

FR = 15.625


def test_pitch_follows_the_drawing_and_snaps_to_the_scale():
    sk = parse_sketch({"duration": 2.0, "pitch_range": [60, 72], "scale": "C major",
                       "strokes": [[[0.0, 0.0], [1.0, 1.0]]]})
    p = sketch_pitch(sk, 32, FR)
    drawn = p[: int(FR)]
    assert drawn[0] == 60 and drawn[-1] >= 71 and np.all(np.diff(drawn) >= 0)
    assert set(np.unique(drawn) % 12) <= {0, 2, 4, 5, 7, 9, 11}
    assert np.all(p[int(FR) + 1 :] == 0)  # nothing drawn after 1 s: unvoiced


def test_features_mark_onsets_and_groups():
    sk = parse_sketch({"duration": 3.0, "scale": "A minor",
                       "strokes": [[[0.2, 0.5], [0.9, 0.5]], [[1.5, 0.2], [2.5, 0.9]]]})
    f, present = sketch_features(sk, 48, FR)
    assert f.shape == (48, 4) and present.tolist() == [True, True, False]
    voiced = f[:, 1] > 0
    assert voiced[5] and not voiced[18] and voiced[30]
    assert f[int(0.2 * FR), 2] == 1 and f[int(1.5 * FR), 2] == 1  # stroke starts are onsets
    assert np.allclose(feature_to_pitch(f[voiced, 0]) % 1, 0, atol=1e-4)  # whole semitones after snapping


def test_repairs_never_crash(recwarn):
    sk = parse_sketch({"duration": 2.0, "strokes": [[[1.5, 0.5], [0.5, 0.2], [1.0, float("nan")]], [], [[5, 2]]]})
    assert any("backwards" in r for r in sk.repairs) and any("non-finite" in r for r in sk.repairs)
    assert any("clipped" in r for r in sk.repairs)
    assert np.all(np.diff(sk.strokes[0][:, 0]) >= 0)
    empty = parse_sketch({"duration": 2.0, "strokes": []})
    f, present = sketch_features(empty, 32, FR)
    assert not present.any() and not f.any()
    assert len(recwarn) >= 2


@pytest.mark.parametrize("bad,match", [
    ({"strokes": "x"}, "list of strokes"),
    ({"strokes": [[["a", 1]]]}, "stroke 0"),
    ({"strokes": [], "duration": -1}, "duration"),
    ({"strokes": [], "scale": "H major"}, "unknown scale"),
    ({"strokes": [], "pitch_range": [80, 60]}, "pitch_range"),
    ({"strokes": [], "tempo": 3}, "unknown sketch key"),
    ([1, 2], "JSON object"),
])
def test_bad_sketches_get_clear_errors(bad, match):
    with pytest.raises(SketchError, match=match):
        parse_sketch(bad)


def test_load_sketch_file_errors(tmp_path):
    with pytest.raises(SketchError, match="not found"):
        load_sketch(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SketchError, match="not valid JSON"):
        load_sketch(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text(json.dumps(synthetic_sketches(1, 4.0)[0]))
    assert load_sketch(tmp_path / "ok.json").duration == 4.0


def test_quantize_and_continuous():
    assert quantize(np.array([60.4, 61.6, 63.6]), "C major").tolist() == [60.0, 62.0, 64.0]
    assert quantize(np.array([61.4]), None).tolist() == [pytest.approx(61.4)]
    assert quantize(np.array([61.0]), "C# minor pentatonic").tolist() == [61.0]


def test_contour_correlation():
    d = np.array([60, 62, 64, 65, 67, 69, 71, 72, 0, 0], float)
    assert contour_correlation(d, d) == pytest.approx(1.0)
    assert contour_correlation(d, np.where(d > 0, d + 12, 0)) == pytest.approx(1.0)  # a transposition follows
    flat = np.where(d > 0, 60.0 + np.arange(10) % 2 * 0.1, 0)
    assert abs(contour_correlation(d, flat)) < 0.5  # a flat line does not
    assert contour_correlation(d, np.where(d > 0, 132 - d, 0)) < -0.9
    assert np.isnan(contour_correlation(d, np.zeros_like(d)))


def test_traced_melody_round_trips():
    notes = [(0.0, 0.5, 60), (0.5, 1.0, 64), (1.0, 2.0, 67), (0.0, 2.0, 48)]  # a bass note below the melody
    sk = parse_sketch(sketch_from_notes(notes, (48, 84), 0.0, 2.0))
    p = sketch_pitch(sk, 31, FR)
    assert p[3] == pytest.approx(60, abs=0.01) and p[12] == pytest.approx(64, abs=0.01)
    assert p[25] == pytest.approx(67, abs=0.01)
