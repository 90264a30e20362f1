"""The drift study of issue 13: distances and verdicts with known answers, injected drifts that the lenses flag while
real music passes, streams that resume, the shipped configs, and one-line errors for bad input."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lmdm.config import ConfigError
from lmdm.errors import UsageError
from lmdm.eval.suite import median_ci
from lmdm.metrics.drift_inject import UNCHANGED, gain_ramp, lowpass_ramp, noise_ramp, sensitivity_check
from lmdm.metrics.drift_stats import MAX_DISTANCE, aggregate, distance, first_last, minute_table, verdict_table
from lmdm.metrics.drift_study import (
    StudyConfig,
    StudySystem,
    checkpoint_codec,
    format_study,
    load_study,
    prompt_schedule,
    quick,
    run_study,
)
from lmdm.metrics.report import METRICS

ROOT = Path(__file__).resolve().parent.parent
BASE = str(ROOT / "data" / "checkpoints" / "lmdm-small")
SR = 16000


# ---- statistics: known answers -----------------------------------------------------------------------------------
def test_median_ci_of_known_values():
    rng = np.random.default_rng(0)
    m = median_ci([1.0, 2.0, 3.0, 100.0], 500, rng)
    assert m["median"] == 2.5 and m["n"] == 4 and 1.0 <= m["ci"][0] <= 2.5 <= m["ci"][1] <= 100.0
    same = median_ci([3.0, 3.0, 3.0, np.nan], 100, rng)
    assert same["median"] == 3.0 and same["ci"] == [3.0, 3.0] and same["n_nonfinite"] == 1


def test_distance_is_in_real_sd_one_sided_for_kad_and_far_for_unmeasurable_windows():
    band = {"mean": -20.0, "std": 2.0, "windows": 10}
    assert distance(-16.0, band, "lufs") == 2.0 and distance(-26.0, band, "lufs") == 3.0
    kad_band = {"mean": 0.4, "std": 0.1, "windows": 10}
    assert distance(0.6, kad_band, "kad") == pytest.approx(2.0) and distance(0.1, kad_band, "kad") == 0.0
    never_clips = {"mean": 0.0, "std": 0.0, "windows": 10}  # real music: sd 0, divided by MIN_SD (0.1%)
    assert distance(0.002, never_clips, "clipped_fraction") == pytest.approx(2.0)
    assert distance(-math.inf, band, "lufs") == MAX_DISTANCE  # silence
    assert distance(math.nan, {"mean": 0.8, "std": 0.1, "windows": 10}, "key_clarity") == MAX_DISTANCE  # no notes
    assert math.isnan(distance(-20.0, None, "lufs")) and math.isnan(distance(-20.0, {**band, "windows": 1}, "lufs"))
    with pytest.raises(UsageError, match="unknown drift metric"):
        distance(1.0, band, "loudness")


def _rows(values_per_window):
    """Window rows (60 s windows) with every metric at the given value."""
    return [{"start_s": 60.0 * k, "end_s": 60.0 * (k + 1), **{m: v for m in METRICS}}
            for k, v in enumerate(values_per_window)]


def test_aggregate_gives_medians_over_streams_and_the_first_last_verdict():
    band = {m: {"mean": 0.0, "std": 1.0, "windows": 20} for m in METRICS}
    streams = [_rows([1.0, 0.0, 4.0]), _rows([-2.0, 0.5, -5.0]), _rows([3.0, 1.0, 6.0])]
    agg = aggregate(streams, band, n_boot=300, seed=0)
    assert agg["n_streams"] == 3 and [w["end_s"] for w in agg["windows"]] == [60, 120, 180]
    lufs = agg["windows"][0]
    assert lufs["value"]["lufs"]["median"] == 1.0 and lufs["distance"]["lufs"]["median"] == 2.0
    v = agg["verdict"]["lufs"]
    assert v["first"]["median"] == 2.0 and v["last"]["median"] == 5.0 and v["ratio"]["value"] == 2.5
    assert v["ratio"]["ci"][0] <= 2.5 <= v["ratio"]["ci"][1]
    assert v["meets_ratio"] is False and v["last_in_band"] is False and v["drift"] is True
    assert "lufs" in agg["drift_lenses"]
    # KAD is one-sided: the -5 of the second stream is closer than real music, not further
    assert agg["verdict"]["kad"]["last"]["median"] == 4.0
    table = minute_table({"sys": agg}, band)
    assert table.count("\n") == 2 + 1 + 3 - 1 and "| sys | 3 | 4 |" in table
    assert "**DRIFT**" in verdict_table({"sys": agg})
    with pytest.raises(UsageError, match="same windows"):
        aggregate([_rows([1.0, 2.0]), _rows([1.0])], band)


def test_the_streams_that_clip_are_counted_where_the_median_hides_them():
    """One stream of three clips in one window: the median clipped fraction stays 0, the tail says 1 stream, 1 window."""
    band = {m: {"mean": 0.0, "std": 1.0, "windows": 20} for m in METRICS}
    streams = [_rows([-20.0, -20.0]), _rows([-19.0, -21.0]), _rows([-20.0, -20.0])]
    for r in streams[0] + streams[1] + streams[2]:
        r["clipped_fraction"] = 0.0
    streams[1][1].update(lufs=4.5, clipped_fraction=0.25)
    agg = aggregate(streams, band, n_boot=100, seed=0)
    assert agg["windows"][1]["value"]["clipped_fraction"]["median"] == 0.0
    assert agg["tail"] == {"streams_clipping": 1, "windows_clipping": 1, "windows": 6, "loudest_window_lufs": 4.5,
                           "most_clipped_window": 0.25}
    study = {"prompts": ["p"], "reference": "r", "real_music": band, "systems": {"sys": agg}, "wall_s": {"sys": 1.0}}
    assert "1 of 3 streams clip, in 1 of 6 windows (the worst window 25.0% of its samples; loudest window 4.5 LUFS)" \
        in format_study(study)
    # a few samples a minute (0.004% of them) read as such, not as 0.0%
    agg["tail"]["most_clipped_window"] = 4e-5
    assert "(the worst window 0.004% of its samples;" in format_study(study)


def test_a_ratio_of_tiny_distances_is_not_drift_inside_the_band():
    rng = np.random.default_rng(0)
    v = first_last([0.1, 0.1, 0.1], [0.5, 0.5, 0.5], 100, rng)  # 5x further, still real music
    assert v["ratio"]["value"] == pytest.approx(5.0) and not v["meets_ratio"] and v["last_in_band"] and not v["drift"]
    same = first_last([0.0, 0.0], [0.0, 0.0], 100, rng)  # 0 / 0: no change
    assert same["ratio"]["value"] == 1.0 and same["meets_ratio"]
    none = first_last([math.nan], [1.0], 100, rng)
    assert none["drift"] is None and math.isnan(none["ratio"]["value"])


# ---- injected drifts -----------------------------------------------------------------------------------------------
def test_injected_drifts_grow_from_nothing_to_full_strength():
    t = np.arange(4 * SR) / SR
    x = (0.1 * np.sin(2 * np.pi * 110 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    g = gain_ramp(x, SR)
    assert g[: SR // 100] == pytest.approx(x[: SR // 100], abs=1e-3)
    assert g[-1] == pytest.approx(x[-1] * 10 ** (8 / 20), rel=1e-4) and g[len(g) // 2] == pytest.approx(
        x[len(x) // 2] * 10 ** (4 / 20), rel=1e-3)  # linear in dB
    assert np.abs(gain_ramp(0.9 * np.ones(SR), SR)).max() == 1.0  # clipped as a file writer would
    n = noise_ramp(x, SR, end_snr_db=0.0)
    rms = lambda a: float(np.sqrt(np.mean(a ** 2)))
    assert rms(n[:SR // 25] - x[:SR // 25]) < 0.01 * rms(x)  # the first 1% of the ramp
    assert rms(n[-SR // 10:] - x[-SR // 10:]) == pytest.approx(rms(x), rel=0.15)
    low = lowpass_ramp(x, SR, cutoff_hz=400.0)
    spec = lambda a: np.abs(np.fft.rfft(a))
    start, end = spec(low[: SR // 10]), spec(low[-SR // 10:])  # the first and last 2.5% of the ramp
    hz = np.fft.rfftfreq(SR // 10, 1 / SR)
    at = lambda s, f: s[np.argmin(np.abs(hz - f))]
    assert at(end, 3000) < 0.05 * at(start, 3000) and at(end, 110) == pytest.approx(at(start, 110), rel=0.05)
    with pytest.raises(UsageError, match="cutoff"):
        lowpass_ramp(x, SR, cutoff_hz=9000.0)


@pytest.fixture(scope="module")
def baseline(both_splits):
    """The baseline of a study on the test data set (10 s windows): band = the two validation pieces."""
    from lmdm.audio.codec import CodecConfig
    from lmdm.metrics.report import load_baseline

    return load_baseline(CodecConfig(), str(both_splits), window_s=10.0)


def test_the_lenses_flag_an_injected_gain_ramp_and_not_the_real_music(baseline):
    check = sensitivity_check(baseline, 40.0, 10.0, n_streams=1, n_boot=200, injections={"gain": gain_ramp})
    # less validation music than asked for (two pieces of up to 20 s): one stream of all of it, three windows
    assert check["n_streams"] == 1 and 30.0 <= check["stream_s"] < 40.0
    assert check["flagged_by"][UNCHANGED] == [], check["flagged_by"]
    assert check["flagged_by"]["gain"], check["systems"]["gain"]["verdict"]
    assert check["passed"]
    assert [w["end_s"] for w in check["systems"]["gain"]["windows"]] == [10, 20, 30]


# ---- the study: resume, configs, errors ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_audio(real_data):
    """What the fake generator streams: a real recording (the study's measuring and bookkeeping are tested)."""
    import pandas as pd

    from lmdm.audio.io import load_audio

    row = pd.read_csv(real_data / "manifest.csv").iloc[0]
    return load_audio(real_data / row.audio, SR)


def _config(tmp_path, data, **kw):
    base = {"systems": (StudySystem("a", BASE, steps=1, cfg_scale=1.0),), "data": str(data), "prompts": ("p0", "p1"),
            "seeds": (0, 1), "minutes": 20.5 / 60, "window_s": 10.0, "out_dir": str(tmp_path / "study"), "n_boot": 50,
            "sensitivity_streams": 0}
    return StudyConfig(**{**base, **kw})


def test_a_study_resumes_by_skipping_the_streams_it_has_finished(tmp_path, both_splits, real_audio):
    calls = []

    def generate(system, prompt, seed, seconds):
        calls.append((system.label, prompt, seed))
        return real_audio[: int(seconds * SR)]

    def killed_at_the_third_stream(system, prompt, seed, seconds):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(system, prompt, seed, seconds)

    cfg = _config(tmp_path, both_splits)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, generate=killed_at_the_third_stream, log=lambda line: None)
    assert len(list((tmp_path / "study" / "streams").glob("*.json"))) == 2
    study = run_study(cfg, generate=generate, log=lambda line: None)  # started again: the last two streams only
    assert sorted(calls) == [("a", p, s) for p in ("p0", "p1") for s in (0, 1)]
    files = sorted((tmp_path / "study" / "streams").glob("*.json"))
    assert len(files) == 4 and Path(study["files"]["plot"]).is_file()
    assert study["systems"]["a"]["n_streams"] == 4 and len(study["systems"]["a"]["windows"]) == 2
    assert json.loads(Path(study["files"]["json"]).read_text())["systems"]["a"]["verdict"].keys() == set(METRICS)

    mtimes = {f: f.stat().st_mtime_ns for f in files}
    files[0].unlink()
    files[1].write_text('{"settings": ')  # cut short by hand: made again
    calls.clear()
    again = run_study(cfg, generate=generate, log=lambda line: None)
    assert len(calls) == 2 and all(f.stat().st_mtime_ns == mtimes[f] for f in files[2:])
    assert again["systems"]["a"]["verdict"]["lufs"] == study["systems"]["a"]["verdict"]["lufs"]

    calls.clear()  # another setting is another stream: nothing stale is reused
    run_study(_config(tmp_path, both_splits, seeds=(0,), minutes=10.5 / 60), generate=generate, log=lambda line: None)
    assert len(calls) == 2


def test_a_checkpoint_retrained_into_the_same_folder_is_streamed_again(tmp_path, both_splits, real_audio):
    """Stream files are keyed by the checkpoint's weights, not only its path: after ``lmdm arc`` exports a new
    student to the same folder, the study does not reuse the old student's streams."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(BASE, ckpt)
    calls = []

    def generate(system, prompt, seed, seconds):
        calls.append(seed)
        return real_audio[: int(seconds * SR)]

    cfg = _config(tmp_path, both_splits, systems=(StudySystem("a", str(ckpt), steps=1, cfg_scale=1.0),), seeds=(0,),
                  minutes=10.5 / 60)
    run_study(cfg, generate=generate, log=lambda line: None)
    run_study(cfg, generate=generate, log=lambda line: None)
    assert len(calls) == 2  # the same weights: both prompts' streams reused
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # "retrained": other weights, same folder
    run_study(cfg, generate=generate, log=lambda line: None)
    assert len(calls) == 4 and len(list((tmp_path / "study" / "streams").glob("*.json"))) == 4
    # another decoder is another stream too: the study's override, then the checkpoint's own config
    run_study(dataclasses.replace(cfg, gl_iters=32, gl_init="random"), generate=generate, log=lambda line: None)
    assert len(calls) == 6
    meta = json.loads((ckpt / "config.json").read_text())
    meta["codec"]["gl_iters"] = 8
    (ckpt / "config.json").write_text(json.dumps(meta))
    run_study(cfg, generate=generate, log=lambda line: None)
    assert len(calls) == 8


def test_the_study_decodes_with_its_overrides_over_each_checkpoints_own(tmp_path, monkeypatch):
    """``gl_iters``/``gl_init`` of the study replace each checkpoint's (a config that predates ``gl_init`` gets
    the codec's default), and the generator decodes with them."""
    from lmdm.metrics.drift_study import checkpoint_generator, stream_decoding

    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((Path(BASE) / "config.json").read_text())
    meta["codec"].pop("gl_init", None)
    meta["codec"]["gl_iters"] = 32
    (old / "config.json").write_text(json.dumps(meta))
    system = StudySystem("a", str(old))
    assert stream_decoding(StudyConfig(systems=(system,)), system) == {"gl_iters": 32, "gl_init": "gradient"}
    cfg = StudyConfig(systems=(system,), gl_init="random")
    assert stream_decoding(cfg, system) == {"gl_iters": 32, "gl_init": "random"}
    # the decoding of every stream measured before it was keyed keeps those streams' key; any other is keyed
    from lmdm.metrics.drift_study import stream_settings
    assert "decoder" not in stream_settings(cfg, system, "x", 0)
    assert stream_settings(StudyConfig(systems=(system,)), system, "x", 0)["decoder"]["gl_init"] == "gradient"
    # likewise plain ping-pong (eta 1) keeps the key of streams measured before eta was a setting; another eta
    # is keyed, and reaches the sampler
    assert "eta" not in stream_settings(cfg, system, "x", 0)["system"]
    half = dataclasses.replace(system, eta=0.5)
    assert stream_settings(cfg, half, "x", 0)["system"]["eta"] == 0.5 and half.sampler_config(3).eta == 0.5
    with pytest.raises(ConfigError, match="eta"):
        StudySystem("c", str(old), eta=2.0)
    checkpoint_codec(StudyConfig(systems=(system, StudySystem("b", BASE))))  # only the decoding differs: one study
    seen = {}
    import lmdm.metrics.report as report

    def fake_stream(ckpt, prompt, seconds, sampler, progress=False):
        seen["codec"] = ckpt.codec.cfg
        return np.zeros(16)

    monkeypatch.setattr(report, "stream_audio", fake_stream)
    checkpoint_generator(decoding={"gl_iters": 4, "gl_init": "random"})(StudySystem("b", BASE), "x", 0, 1.0)
    assert seen["codec"].gl_iters == 4 and seen["codec"].gl_init == "random"
    with pytest.raises(ConfigError, match="gl_init"):
        StudyConfig(systems=(system,), gl_init="zeros")


def test_prompt_switches_cycle_through_the_prompts():
    s = StudySystem("switch", BASE, switch_every_s=60.0)
    assert prompt_schedule(s, ["a", "b", "c"], 1, 150.0) == [(0.0, "b"), (60.0, "c"), (120.0, "a")]
    assert prompt_schedule(StudySystem("one", BASE), ["a", "b"], 1, 150.0) == "b"


def test_the_bundled_checkpoint_streams_with_the_system_settings():
    from lmdm.metrics.drift_study import checkpoint_generator

    gen = checkpoint_generator()
    a = gen(StudySystem("a", BASE, steps=1, cfg_scale=1.0), "a slow Bach chorale on church organ", 0, 4.0)
    short = gen(StudySystem("b", BASE, steps=1, cfg_scale=1.0, window_chunks=1), "a slow Bach chorale on church organ",
                0, 4.0)
    assert a.shape == short.shape == (4 * SR,) and np.isfinite(a).all()
    block = 16 * 256 * 4  # samples of one block
    assert np.allclose(a[: block], short[: block], atol=1e-4)  # the same until the context differs
    assert not np.allclose(a[-block:], short[-block:], atol=1e-3)


def test_the_shipped_configs_hold_the_systems_of_the_issue(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_study(ROOT / "configs" / "drift-study.json")
    got = [(Path(s.checkpoint).name, s.sampler, s.steps, s.cfg_scale, s.eta) for s in cfg.systems]
    # the base at its default (eta 0.5, the bundled checkpoint's own sampler) and at 4 steps; the ARC student samples
    # as it was trained: without guidance (lmdm.train.arc.rollout), plain ping-pong
    assert got == [("lmdm-small", "pingpong", 8, 2.0, 0.5), ("lmdm-small", "pingpong", 4, 2.0, 0.5),
                   ("lmdm-small-arc", "pingpong", 4, 1.0, 1.0), ("lmdm-small-arc", "pingpong", 2, 1.0, 1.0)]
    assert (cfg.minutes, cfg.window_s, len(cfg.seeds), cfg.n_prompts, cfg.prompts) == (10.0, 60.0, 3, 4, ())
    checkpoint_codec(cfg)  # both checkpoints share the codec, so one baseline measures them
    regimes = load_study(ROOT / "configs" / "drift-study-regimes.json")
    assert {"euler", "pingpong"} == {s.sampler for s in regimes.systems}
    assert any(s.window_chunks for s in regimes.systems) and any(s.switch_every_s for s in regimes.systems)
    eta = load_study(ROOT / "configs" / "drift-study-eta.json")  # the base model with less fresh noise
    assert [(Path(s.checkpoint).name, s.steps, s.cfg_scale, s.eta) for s in eta.systems] == [("lmdm-small", 8, 2.0, 0.5)]
    assert (eta.minutes, eta.seeds, eta.n_prompts, eta.gl_iters) == (cfg.minutes, cfg.seeds, cfg.n_prompts, cfg.gl_iters)
    q = quick(cfg)
    assert (q.minutes, q.window_s, q.seeds, q.n_prompts) == (1.0, 30.0, (0,), 2)


def test_bad_configs_are_one_line_errors(tmp_path, capsys):
    from lmdm.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"systems": [{"label": "a", "checkpoint": BASE, "stepz": 4}]}))
    assert main(["drift-study", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "systems[0]" in err and "'stepz'" in err and "valid keys are" in err
    cases = [({"systems": []}, "at least one system"),
             ({"systems": [{"label": "a", "checkpoint": BASE, "sampler": "heun"}]}, "unknown sampler"),
             ({"systems": [{"label": "a", "checkpoint": BASE}], "minutes": 0.1, "window_s": 60}, "at most a stream"),
             ({"systems": [{"label": "a", "checkpoint": BASE}, {"label": "a", "checkpoint": BASE}]}, "unique")]
    for data, message in cases:
        bad.write_text(json.dumps(data))
        assert main(["drift-study", "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"systems": [{"label": "a", "checkpoint": BASE}]}))
    for argv, message in ((["--config", str(good), "--seeds", "0"], "--seeds must be at least 1"),
                          (["--config", str(good), "--minutes", "0"], "minutes must be"),
                          (["--config", str(tmp_path / "none.json")], "drift-study config not found")):
        assert main(["drift-study", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_one_study_measures_systems_of_one_codec(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    meta = json.loads((Path(BASE) / "config.json").read_text())
    meta["codec"]["n_mels"] = 64
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="different mel codecs"):
        checkpoint_codec(StudyConfig(systems=(StudySystem("a", BASE), StudySystem("b", str(other)))))
