"""The evaluation suite's glue: per-row statistics, adherence, separation checks and the command's input errors."""
import json

import numpy as np
import pytest

from lmdm.cli import main
from lmdm.config import ConfigError
from lmdm.errors import UsageError
from lmdm.eval.suite import (
    EvalConfig,
    instrument_hits,
    markdown_table,
    markdown_prompt_table,
    mean_ci,
    nearest_distances,
    per_prompt_means,
    separation_checks,
    stream_seeds,
)
from lmdm.eval.windows import cut_windows, prompt_index, prompt_instrument, prompt_piece_windows, read_prompts
from lmdm.streaming.streamer import SamplerConfig


def test_mean_ci_of_known_values_and_of_silence():
    rng = np.random.default_rng(0)
    m = mean_ci([1.0, 2.0, 3.0, 4.0], 500, rng)
    assert m["mean"] == 2.5 and m["n"] == 4 and 1.0 <= m["ci"][0] < 2.5 < m["ci"][1] <= 4.0
    quiet = mean_ci([-np.inf, -np.inf], 100, rng)  # the loudness of silence
    assert quiet["mean"] == -np.inf and quiet["n"] == 0 and quiet["n_nonfinite"] == 2
    mixed = mean_ci([-np.inf, -20.0, -22.0], 100, rng)
    assert mixed["mean"] == -21.0 and mixed["n"] == 2 and mixed["n_nonfinite"] == 1


def test_nearest_distances_equal_a_slow_loop():
    rng = np.random.default_rng(1)
    x, ref = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    slow = [min(np.linalg.norm(a - b) for b in ref) for a in x]
    np.testing.assert_allclose(nearest_distances(x, ref), slow, rtol=1e-9, atol=1e-9)
    assert np.allclose(nearest_distances(ref[:3], ref), 0.0, atol=1e-6)  # a copy of the training set: distance 0


def test_instrument_hits_and_prompt_instruments():
    names = ["church organ", "flute", "piano"]
    logits = np.array([[5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0]])
    assert instrument_hits(logits, ["church organ", "flute", ""], names)[:2] == [1.0, 0.0]
    assert np.isnan(instrument_hits(logits, ["church organ", "flute", ""], names)[2])
    assert prompt_instrument("A slow chorale by Bach, played on church organ.") == "church organ"
    assert prompt_instrument("solo violin") == "violin" and prompt_instrument("a drum solo") == ""
    assert prompt_instrument("a string ensemble playing") == "string ensemble"  # the longest name wins


def test_windows_are_whole_and_non_overlapping():
    a = np.arange(25, dtype=np.float32)
    w = cut_windows(a, 1, 10.0)
    assert w.shape == (2, 10) and w[1, 0] == 10 and cut_windows(a, 1, 10.0, max_windows=1).shape == (1, 10)


def test_per_prompt_means_group_a_systems_windows_by_prompt_and_skip_real_works():
    pieces = ["prompt0-seed0", "prompt0-seed1", "prompt1-seed0", "prompt1-seed0"]
    out = per_prompt_means(pieces, {"notes.mean_polyphony": [1.0, 2.0, float("nan"), 3.0],
                                    "level.lufs": [float("-inf"), float("-inf"), -20.0, -22.0]})
    assert out == {"notes.mean_polyphony": [1.5, 3.0], "level.lufs": [None, -21.0]}
    assert per_prompt_means(["prompt0", "prompt1"], {"x": [1.0, 2.0]}) == {"x": [1.0, 2.0]}
    assert per_prompt_means(["bach__bwv1", "prompt0"], {"x": [1.0, 2.0]}) == {}  # a real work: no prompts
    assert prompt_index("prompt12-seed3") == 12 and prompt_index("prompt") is None and prompt_index("bach") is None


def test_the_prompts_own_pieces_are_the_real_music_the_captions_describe(both_splits):
    """Prompts that are validation captions get their pieces' first windows (as many as a stream on the prompt has,
    fewer where a piece is shorter); a prompt that is no caption means no matched real row."""
    import pandas as pd

    from lmdm.audio.io import load_audio

    df = pd.read_csv(both_splits / "manifest.csv", keep_default_na=False)
    val = df[df.split == "val"].sort_values("work_id")
    prompts = list(val.caption)[::-1]
    audio = [load_audio(both_splits / val[val.caption == p].iloc[0].audio, 16000) for p in prompts]
    whole = [len(a) // 80000 for a in audio]  # whole 5 s windows in each piece (at most 20 s)
    assert min(whole) >= 1 and max(whole) >= 3
    ws = prompt_piece_windows(both_splits, prompts, 5.0, 3, 16000)
    assert ws is not None and ws.kind == "real" and len(ws) == sum(min(w, 3) for w in whole)
    assert ws.piece == ["prompt0"] * min(whole[0], 3) + ["prompt1"] * min(whole[1], 3)
    first = val[val.caption == prompts[0]].iloc[0]
    assert np.array_equal(ws.windows[0], audio[0][:80000]) and ws.instrument[0] == first.instrument
    assert len(prompt_piece_windows(both_splits, prompts[:1], 5.0, 10, 16000)) == whole[0]  # a shorter piece: fewer
    assert prompt_piece_windows(both_splits, [prompts[0], "solo flute"], 5.0, 3, 16000) is None
    assert prompt_piece_windows(both_splits, prompts, 30.0, 3, 16000) is None  # no piece holds a 30 s window


def test_markdown_prompt_table_prints_each_prompt_for_each_row_with_values():
    rows = [{"name": "real validation", "kind": "real"},
            {"name": "real, the prompts' own pieces", "kind": "real",
             "by_prompt": {"level.lufs": [-20.0, -19.0], "notes.notes_per_s": [3.0, 1.0],
                           "notes.mean_polyphony": [1.0, 2.5], "notes.pitch_range": [9.0, 15.0]}},
            {"name": "base", "kind": "system",
             "by_prompt": {"level.lufs": [-21.0, None], "notes.notes_per_s": [2.0, 0.0],
                           "notes.mean_polyphony": [1.0, None], "notes.pitch_range": [7.0, None]}}]
    lines = markdown_prompt_table({"rows": rows, "prompts": ["a fiddle tune", "a chorale " * 10]}).splitlines()
    assert len(lines) == 2 + 2 * 2 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert lines[4] == "| 1: " + ("a chorale " * 10)[:47] + "… | real, the prompts' own pieces | −19.0 | 1.00 | 2.50 | 15.0 |"
    assert lines[5].endswith("| base | – | 0.00 | – | – |")
    with pytest.raises(UsageError, match="per-prompt"):
        markdown_prompt_table({"rows": rows[:1], "prompts": ["x"]})


def _row(name, lufs, kad_ci):
    m = lambda v: {"n": 0 if not np.isfinite(v[0]) else 3, "n_nonfinite": 0, "mean": v[0], "ci": list(v[1])}
    return {"name": name, "level": {"lufs": m(lufs)}, "notes": {},
            "distribution": {"kad": {"value": kad_ci[0], "ci": list(kad_ci)}}}


def test_separation_checks_flag_a_lens_that_cannot_tell_music_from_noise():
    rows = [_row("real validation (noise floor)", (-20.0, (-21.0, -19.0)), (0.0, 0.01)),
            _row("white noise", (-20.5, (-21.5, -19.5)), (0.5, 0.6)),  # same loudness: LUFS cannot separate
            _row("silence", (-np.inf, (np.nan, np.nan)), (0.4, 0.5))]
    checks = separation_checks(rows)
    assert checks["level.lufs"] == {"vs_noise": False, "vs_silence": True, "broken": False}
    assert checks["distribution.kad"]["vs_noise"] and not checks["distribution.kad"]["broken"]
    rows[0]["distribution"]["kad"]["ci"] = [0.0, 0.7]  # a distance whose noise floor covers noise
    assert separation_checks(rows)["distribution.kad"]["broken"]


def test_eval_config_checks_and_seeds():
    assert stream_seeds(EvalConfig(seeds=3, sampler=SamplerConfig(seed=5))) == [5, 6, 7]
    with pytest.raises(ConfigError, match="at least one window"):
        EvalConfig(seconds=5.0, window_s=10.0)
    with pytest.raises(ConfigError, match="seeds must be a positive integer"):
        EvalConfig(seeds=0)
    assert EvalConfig.quick().seconds < EvalConfig().seconds


def test_prompts_file_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        read_prompts(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UsageError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "p.txt").write_text("solo flute\n\na slow Bach chorale on church organ\n")
    assert read_prompts(tmp_path / "p.txt") == ["solo flute", "a slow Bach chorale on church organ"]


def _one_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("lmdm: error: "), err
    return err[0]


def test_eval_command_answers_bad_input_in_one_line(tmp_path, capsys, real_data):
    assert "seconds must be a positive number" in _one_error(capsys, ["--quiet", "eval", "--seconds", "0"])
    assert "no such folder" in _one_error(capsys, ["--quiet", "eval", "--data", str(tmp_path / "none")])
    assert "--gl-iters must be a whole number >= 1" in _one_error(capsys, ["--quiet", "eval", "--gl-iters", "0"])
    (tmp_path / "empty.txt").write_text("")
    assert "holds no prompt" in _one_error(capsys, ["--quiet", "eval", "--data", str(real_data),
                                                    "--prompts", str(tmp_path / "empty.txt")])
    # the fixture's two works are both in the train split: no validation prompts to draw
    assert "no validation pieces" in _one_error(capsys, ["--quiet", "eval", "--data", str(real_data)])


def test_eval_refuses_a_checkpoint_from_another_codec(tmp_path, capsys, real_data):
    from lmdm.audio.codec import CodecConfig, MelCodec
    from lmdm.checkpoint import save_checkpoint
    from lmdm.model.config import DiTConfig
    from lmdm.model.dit import DiT

    codec = MelCodec(CodecConfig(n_mels=64))
    model = DiT(DiTConfig(latent_channels=codec.channels, d_model=32, n_layers=1, n_heads=2))
    save_checkpoint(tmp_path / "other", model, codec)
    (tmp_path / "p.txt").write_text("solo flute\n")
    msg = _one_error(capsys, ["--quiet", "eval", "--data", str(real_data), "--prompts", str(tmp_path / "p.txt"),
                              "--checkpoint", str(tmp_path / "other")])
    assert "uses another mel codec" in msg and json.dumps(64) in msg


def test_train_transcriber_command_refuses_a_missing_config(tmp_path, capsys):
    assert "config file not found" in _one_error(capsys, ["--quiet", "metrics", "train-transcriber", "--config",
                                                          str(tmp_path / "none.json")])


def test_the_transcriber_config_in_configs_loads():
    from pathlib import Path

    from lmdm.config import load_json
    from lmdm.eval.transcriber import TranscriberTrainConfig

    cfg = load_json(TranscriberTrainConfig, Path(__file__).resolve().parent.parent / "configs" / "transcriber.json")
    assert cfg.steps == 2500 and cfg.export_dir == "data/checkpoints/transcriber"


def test_a_clipped_copy_of_real_music_is_flagged_by_level_and_scores_worse_on_distribution(real_data):
    """Real windows turned up 4x and hard-clipped (2-3% of samples at full scale): the level lens flags them, and
    the distribution lens puts them further from real music than the same windows unclipped (measured: KAD 0.67
    vs 0.18 against windows of the same two pieces)."""
    import pandas as pd

    from lmdm.audio.codec import CodecConfig, MelCodec
    from lmdm.audio.io import load_audio
    from lmdm.eval.distribution import kad
    from lmdm.eval.level import level
    from lmdm.eval.suite import window_embeddings
    from lmdm.eval.windows import WindowSet
    from lmdm.metrics.embedder import load_embedder

    sr = 16000
    pieces = [cut_windows(load_audio(real_data / r.audio, sr), sr, 5.0)
              for r in pd.read_csv(real_data / "manifest.csv").itertuples()]
    ref = np.concatenate([w[:2] for w in pieces])
    test = np.concatenate([w[2:4] for w in pieces])
    clipped = np.clip(4.0 * test, -1.0, 1.0)
    assert all(level(w, sr).clipped_fraction == 0.0 for w in test)
    assert all(level(w, sr).clipped_fraction > 0.01 for w in clipped)
    embedder, _ = load_embedder()
    codec = MelCodec(CodecConfig())
    emb = lambda a: window_embeddings(WindowSet("x", "real", a, ["p"] * len(a), [""] * len(a), sr), embedder,
                                      codec)[0]
    ref_e = emb(ref)
    assert kad(emb(clipped), ref_e) > kad(emb(test), ref_e) + 0.2


def test_eval_quick_end_to_end_prints_every_row_and_writes_json(both_splits, tmp_path, capsys):
    """The whole command on a tiny data set (two pieces in each split) with the bundled checkpoint, embedder and
    transcriber: every calibration row and the system are measured, with N, and the JSON carries the same. The prompt
    is a validation caption, so its own piece is a real row too, and both keep per-prompt means."""
    import pandas as pd

    df = pd.read_csv(both_splits / "manifest.csv", keep_default_na=False)
    caption = df[df.split == "val"].sort_values("work_id").caption.iloc[0]
    (tmp_path / "p.txt").write_text(caption + "\n")
    out = tmp_path / "report.json"
    rc = main(["--quiet", "eval", "--quick", "--data", str(both_splits), "--prompts", str(tmp_path / "p.txt"),
               "--steps", "2", "--gl-iters", "8", "--gl-init", "random", "--json", str(out),
               "--plots", str(tmp_path / "plots")])
    text = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out.read_text())
    # every decode (the system's and the ceiling rows') with the Griffin-Lim iterations and start asked for
    assert report["decoder"] == {"gl_iters": 8, "gl_init": "random"}
    info = report["rows"][-1]["info"]
    assert info["gl_iters"] == 8 and info["gl_init"] == "random" and info["precision"] == "float32"
    names = [r["name"] for r in report["rows"]]
    # the bundled model diffuses a learned latent: real music through it and the decoder is a second ceiling
    assert names == ["real validation (noise floor)", "real, the prompts' own pieces",
                     "real through codec + decoder (ceiling)", "real through lmdm-small's latent + decoder (ceiling)",
                     "white noise", "silence", "lmdm-small"]
    for name in names:
        assert name in text
    real, own, noise, silence, system = (report["rows"][i] for i in (0, 1, 4, 5, 6))
    assert real["windows"] == 2 and system["windows"] == 2 and system["pieces"] == 1  # 10 s stream, 5 s windows
    assert own["kind"] == "real" and own["windows"] == 2 and own["pieces"] == 1  # the caption's piece, cut as a stream
    for row in (own, system):  # one prompt: its mean is the row's mean
        assert row["by_prompt"]["notes.notes_per_s"] == [pytest.approx(row["notes"]["notes_per_s"]["mean"])]
    assert real["by_prompt"] == {} and noise["by_prompt"] == {}
    assert "per prompt" in text and f"| 0: {caption[:47]}" in text
    assert silence["level"]["lufs"]["mean"] == float("-inf") and noise["level"]["clipped_fraction"]["mean"] == 0.0
    assert real["notes"]["notes_per_s"]["mean"] > noise["notes"]["notes_per_s"]["mean"]
    assert all(r["distribution"]["n_x"] == r["windows"] and r["distribution"]["n_y"] == 2 for r in report["rows"])
    sketch = system["adherence"]["sketch_contour"]  # one traced melody and one drawn shape in quick mode
    assert sketch["n"] + sketch["n_nonfinite"] == 2 and "sketch_contour" not in real["adherence"]
    assert (tmp_path / "plots" / "eval_lenses.png").is_file()
    assert (tmp_path / "plots" / "eval_histograms.png").is_file()
    assert len(real["histograms"]["pitch_class_seconds"]) == 12 and sum(real["histograms"]["pitch_class_seconds"]) > 0
    assert sum(silence["histograms"]["pitch_class_seconds"]) == 0 and silence["histograms"]["polyphony"] == []
    table = markdown_table(report, {"lmdm-small": {"CPU h": "0.1"}}).splitlines()
    assert len(table) == 2 + len(names) and all(line.count("|") == table[0].count("|") for line in table)
    assert table[-1].startswith("| lmdm-small | 0.1 | 2 | ") and table[7].startswith("| silence |  | 2 | −inf |")
    assert f"{system['level']['lufs']['mean']:.1f}".replace("-", "−") in table[-1]


def test_eval_with_the_level_guard_names_the_row_and_says_how_often_the_guard_cut(both_splits, tmp_path, capsys):
    """``--level-guard`` streams each checkpoint through the guard at the ceiling it stores: the row is named
    ``NAME + level guard``, and with a ceiling far below music every block is cut (the report and the printout say
    so, and the row is quieter than music); a checkpoint without a stored ceiling is refused in one line."""
    import shutil

    from lmdm.checkpoint import default_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(default_checkpoint(), ck)
    meta = json.loads((ck / "config.json").read_text())
    meta["info"]["level_ceiling"] = -2.0
    (ck / "config.json").write_text(json.dumps(meta))
    (tmp_path / "p.txt").write_text("a slow Bach chorale on church organ\n")
    argv = ["--quiet", "eval", "--quick", "--data", str(both_splits), "--prompts", str(tmp_path / "p.txt"),
            "--steps", "2", "--gl-iters", "8", "--checkpoint", str(ck), "--level-guard"]
    out = tmp_path / "report.json"
    assert main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    row = report["rows"][-1]
    assert row["name"] == "ck + level guard" and row["kind"] != "real"
    g = report["level_guard"]["ck + level guard"]
    assert g["ceiling"] == -2.0 and g["blocks"] > 0 and g["cut_blocks"] == g["blocks"] and g["max_cut_db"] > 3
    assert f"level guard of ck + level guard: {g['blocks']} of {g['blocks']} blocks turned down" in text
    assert row["level"]["lufs"]["mean"] < report["rows"][0]["level"]["lufs"]["mean"] - 3  # real validation
    del meta["info"]["level_ceiling"]
    (ck / "config.json").write_text(json.dumps(meta))
    assert "stores no level_ceiling" in _one_error(capsys, argv)


def test_eval_table_merges_runs_that_share_their_calibration_rows(tmp_path):
    """``scripts/eval_table.py --merge``: calibration rows once (a later run's extra ceiling row added; a bootstrap CI
    that differs is the first run's), every run's systems under its label; a shared calibration row whose estimates
    differ, or other prompts, stop the merge."""
    import runpy
    from pathlib import Path

    merged = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "eval_table.py"))["merged"]
    real = {"name": "real validation", "kind": "real", "level": {"lufs": {"mean": -19.8, "ci": [-20.0, -19.5]}}}
    ceiling = {"name": "real through base's latent", "kind": "ceiling"}
    other = {"name": "real through arc's latent", "kind": "ceiling"}
    system = {"name": "base", "kind": "system"}
    files = {}
    # another bootstrap of the same windows, from a version of the suite that also keeps per-prompt means
    resampled = {**real, "level": {"lufs": {"mean": -19.8, "ci": [-20.1, -19.4]}}, "by_prompt": {}}
    for name, rows, prompts in (("a", [real, ceiling, system], ["p"]), ("b", [resampled, ceiling, other, system], ["p"]),
                                ("c", [{**real, "level": {"lufs": {"mean": -20.0}}}, system], ["p"]),
                                ("d", [real, system], ["q"])):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"rows": rows, "prompts": prompts}))
    out = merged([f"8 steps={files['a']}", f"4 steps={files['b']}"])
    assert [r["name"] for r in out["rows"]] == ["real validation", "real through base's latent",
                                               "real through arc's latent", "8 steps: base", "4 steps: base"]
    with pytest.raises(SystemExit, match="row 'real validation' differs"):
        merged([f"x={files['a']}", f"y={files['c']}"])
    with pytest.raises(SystemExit, match="prompts differ"):
        merged([f"x={files['a']}", f"y={files['d']}"])
