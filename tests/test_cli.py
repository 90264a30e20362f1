"""The ``lmdm`` command line: commands on the bundled checkpoint, the sampler options declared once, and the
error contract (user errors: one line, status 2; bugs: traceback, a line saying so, status 1)."""
import ast
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

import lmdm.cli
from lmdm.checkpoint import default_checkpoint
from lmdm.cli import BUG_LINE, build_parser, main
from lmdm.cli.options import FLAGS, sampler_config
from lmdm.config import ConfigError
from lmdm.errors import UsageError
from lmdm.streaming.streamer import SamplerConfig

PROMPT = "a slow Bach chorale on church organ"
CLI = Path(lmdm.cli.__file__).parent


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err: str) -> str:
    """The message of the single ``lmdm: error:`` line ``err`` must consist of."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmdm: error: "), err
    return lines[0].removeprefix("lmdm: error: ")


def generate(tmp_path, capsys, name, *extra, prompt=PROMPT, seconds="3"):
    out = tmp_path / name
    rc, stdout, stderr = run(["--quiet", "generate", prompt, "--seconds", seconds, "--out", str(out), *extra], capsys)
    assert rc == 0, stderr
    audio, sr = sf.read(out)
    return audio, sr, stdout, stderr


# ---- commands ----------------------------------------------------------------------------------------------------
def test_generate_writes_finite_non_silent_audio_of_the_requested_length(tmp_path, capsys):
    audio, sr, stdout, _ = generate(tmp_path, capsys, "a.wav", "--steps", "3", "--sampler", "euler", "--cfg", "1.5",
                                    seconds="3.5")
    assert sr == 16000 and audio.ndim == 1 and len(audio) == 56000
    assert np.isfinite(audio).all()
    assert np.sqrt(np.mean(audio**2)) > 0.01
    # the options given, and the bundled checkpoint's own eta (its info.sampler) for the one not given
    assert "(3.50 s, 16000 Hz) with the block_causal streamer, 3 euler steps, CFG 1.5, eta 0.5, seed 0" in stdout
    rtf = float(re.search(r"real-time factor ([0-9.]+)", stdout).group(1))
    latencies = re.search(r"bootstrap ([0-9.]+) ms, fused first step ([0-9.]+) ms, subsequent steps ([0-9.]+) ms",
                          stdout)
    assert rtf > 0 and latencies and all(float(v) > 0 for v in latencies.groups())


def test_same_seed_same_audio_and_prompts_differ(tmp_path, capsys):
    a, *_ = generate(tmp_path, capsys, "a.wav", "--seed", "7")
    b, *_ = generate(tmp_path, capsys, "b.wav", "--seed", "7")
    c, *_ = generate(tmp_path, capsys, "c.wav", "--seed", "7", prompt="a lively Irish dance tune on flute")
    d, *_ = generate(tmp_path, capsys, "d.wav", "--seed", "8")
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01
    assert np.abs(a - d).mean() > 0.01


def test_long_prompt_is_truncated_with_a_warning(tmp_path, capsys):
    _, _, _, stderr = generate(tmp_path, capsys, "long.wav", prompt="organ " * 1700, seconds="1")
    assert re.search(r"^lmdm: warning: .*truncated", stderr, re.M)


def test_sketch_command_prints_the_correlation_the_library_measures(tmp_path, capsys):
    from lmdm.checkpoint import load_checkpoint
    from lmdm.control.evaluate import SKETCH_SAMPLER, render_sketch
    from lmdm.control.sketch import load_sketch, synthetic_sketches

    sk = tmp_path / "s.json"
    sk.write_text(json.dumps(synthetic_sketches(1, 3.0)[0]))
    rc, out, err = run(["--quiet", "sketch", str(sk), "--prompt", "solo flute", "--out", str(tmp_path / "s.wav")], capsys)
    assert rc == 0, err
    audio, sr = sf.read(tmp_path / "s.wav")
    assert len(audio) == 3 * sr
    printed = float(re.search(r"correlation (-?[0-9.]+)", out).group(1))
    assert math.isfinite(printed) and -1 <= printed <= 1
    expected = render_sketch(load_checkpoint(None), load_sketch(sk), "solo flute", 3.0, SKETCH_SAMPLER)
    assert printed == pytest.approx(expected.correlation, abs=5e-4)
    assert np.abs(audio - np.clip(expected.audio, -1, 1)).max() < 1e-3  # the command used the sketch's sampler
    (tmp_path / "bad.json").write_text(json.dumps({"strokes": [], "scale": 5}))
    rc, _, err = run(["sketch", str(tmp_path / "bad.json"), "--out", str(tmp_path / "b.wav"), "--seconds", "2"], capsys)
    assert rc == 2 and "scale must be text" in one_error_line(err)


def test_jam_command_writes_aligned_answer_and_mix(tmp_path, capsys):
    from lmdm.data.example import EXAMPLE_PATH

    out, mix = tmp_path / "jam.wav", tmp_path / "mix.wav"
    rc, stdout, err = run(["--quiet", "jam", "--input", str(EXAMPLE_PATH), "--prompt", "string ensemble",
                           "--out", str(out), "--mix", str(mix)], capsys)
    assert rc == 0, err
    a, sr = sf.read(out)
    m, _ = sf.read(mix)
    assert m.shape == (len(a), 2) and np.isfinite(a).all() and np.sqrt(np.mean(a**2)) > 0.005
    assert np.corrcoef(m[:, 1], a)[0, 1] > 0.99  # the answer on the right
    delay = float(re.search(r"generative delay ([0-9]+) ms", stdout).group(1))
    assert 1350 < delay < 1360  # one 1.024 s block + the 330 ms margin
    assert re.search(r"underruns [0-9]+ of [1-9][0-9]* blocks", stdout)
    rc, _, err = run(["jam", "--input", str(tmp_path / "none.wav"), "--out", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "not found" in one_error_line(err)



def test_generate_with_the_level_guard_turns_down_blocks_above_the_checkpoints_ceiling(tmp_path, capsys):
    """``--level-guard`` streams through the guard at the ceiling the checkpoint stores: with one far below music
    every block is turned down (quieter audio, and the report says so); without a stored ceiling the command
    refuses in one line; the bundled checkpoints store theirs (the same to float rounding: one autoencoder, one data
    set, each export's own decode of the training split)."""
    from lmdm.checkpoint import read_config, repo_root

    ck = tmp_path / "ck"
    shutil.copytree(default_checkpoint(), ck)
    meta = json.loads((ck / "config.json").read_text())
    meta["info"]["level_ceiling"] = -2.0
    (ck / "config.json").write_text(json.dumps(meta))
    args = ("--steps", "2", "--checkpoint", str(ck))
    plain, _, out, _ = generate(tmp_path, capsys, "plain.wav", *args, seconds="2")
    guarded, _, out_g, _ = generate(tmp_path, capsys, "guarded.wav", *args, "--level-guard", seconds="2")
    assert "level guard" not in out
    m = re.search(r"level guard: ([0-9]+) of ([0-9]+) blocks turned down, the most by ([0-9.]+) dB", out_g)
    assert m and int(m[1]) == int(m[2]) == 2 and float(m[3]) > 3, out_g
    assert np.sqrt(np.mean(guarded**2)) < 0.5 * np.sqrt(np.mean(plain**2))
    del meta["info"]["level_ceiling"]
    (ck / "config.json").write_text(json.dumps(meta))
    rc, _, err = run(["generate", PROMPT, "--seconds", "1", "--out", str(tmp_path / "x.wav"), *args, "--level-guard"],
                     capsys)
    assert rc == 2 and "stores no level_ceiling" in one_error_line(err)
    root = repo_root() / "data" / "checkpoints"
    ceilings = [tuple(read_config(root / name)["info"][k] for k in ("level_ceiling", "frame_level_ceiling"))
                for name in ("lmdm-small", "lmdm-small-arc")]
    # at the shipped FRAME_QUANTILE (0.999) the frame ceiling lies below the loudest 0.4 s, so the frame check is the
    # one that acts (a window's level never exceeds its loudest frame's; README, "A stricter frame ceiling")
    assert ceilings[0] == pytest.approx(ceilings[1], rel=1e-4) and 2.0 < ceilings[0][1] < ceilings[0][0] < 4.0


# ---- user errors: one line, status 2 ------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", ["0", "-2", "nan"])
def test_bad_seconds(tmp_path, capsys, seconds):
    rc, _, err = run(["generate", PROMPT, "--seconds", seconds, "--out", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "seconds must be a positive number" in one_error_line(err)


def test_unwritable_output(tmp_path, capsys):
    rc, _, err = run(["generate", PROMPT, "--seconds", "1", "--out", str(tmp_path / "no" / "such" / "x.wav")], capsys)
    assert rc == 2 and "does not exist" in one_error_line(err)
    rc, _, err = run(["generate", PROMPT, "--seconds", "1", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "is a folder" in one_error_line(err)
    rc, _, err = run(["generate", PROMPT, "--seconds", "1", "--out", str(tmp_path / "x.mp4")], capsys)
    assert rc == 2 and one_error_line(err) == "--out must end in .wav, .flac or .ogg, got x.mp4"


def test_missing_checkpoint(tmp_path, capsys):
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(tmp_path / "nope")],
                     capsys)
    assert rc == 2 and "checkpoint not found" in one_error_line(err)


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(default_checkpoint(), bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(bad)], capsys)
    assert rc == 2 and "corrupt" in one_error_line(err)
    (bad / "config.json").write_text("{not json")
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(bad)], capsys)
    assert rc == 2 and "not valid JSON" in one_error_line(err)


def test_checkpoint_config_with_unknown_keys(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(default_checkpoint(), bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["model"]["n_layerz"] = 3
    (bad / "config.json").write_text(json.dumps(meta))
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(bad)], capsys)
    msg = one_error_line(err)
    assert rc == 2 and "n_layerz" in msg and "valid keys are" in msg and "n_layers" in msg


def test_train_config_with_unknown_keys_or_a_wrong_tuple(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"batchsize": 4}))
    rc, _, err = run(["train", "--config", str(cfg)], capsys)
    msg = one_error_line(err)
    assert rc == 2 and "batchsize" in msg and "batch_size" in msg
    cfg.write_text(json.dumps({"betas": [0.9, 0.99, 0.5]}))
    rc, _, err = run(["train", "--config", str(cfg)], capsys)
    assert rc == 2 and f"{cfg}.betas: expected tuple[float, float]" in one_error_line(err)


def test_arc_set_changes_one_config_field_type_checked(tmp_path, capsys, monkeypatch):
    """``lmdm arc --set KEY=VALUE`` changes a field of configs/arc.json (VALUE parsed as JSON), and a wrong key, type
    or form is a one-line error before anything trains."""
    import lmdm.train.arc.trainer as trainer

    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"], seen["overrides"] = cfg, kw["overrides"]
        return SimpleNamespace(step=0, hours=0.0, disc_params=0, last={}, final_dir=tmp_path)  # nothing trains

    monkeypatch.setattr(trainer, "arc_train", fake_train)
    config = str(Path(__file__).parents[1] / "configs" / "arc.json")
    rc, _, _ = run(["arc", "--config", config, "--set", "own_stream_every=3", "--set", "lr_g=2e-5"], capsys)
    assert rc == 0 and seen["cfg"].own_stream_every == 3 and seen["cfg"].lr_g == 2e-5
    assert seen["cfg"].ceiling_weight == json.loads(Path(config).read_text())["ceiling_weight"]  # the rest kept
    # the shipped config's loop-gain term acts on own streams: turning them off alone is refused, with what to set
    rc, _, err = run(["arc", "--config", config, "--set", "own_stream_every=0"], capsys)
    assert rc == 2 and "loop_gain_weight = 0" in one_error_line(err), err
    rc, _, _ = run(["arc", "--config", config, "--set", "own_stream_every=0", "--set", "loop_gain_weight=0"], capsys)
    assert rc == 0 and seen["cfg"].own_stream_every == 0 and seen["cfg"].loop_gain_weight == 0
    for bad, needle in [("own_stream_everyy=0", "own_stream_everyy"), ("own_stream_every=two", "own_stream_every"),
                        ("own_stream_every", "KEY=VALUE")]:
        rc, _, err = run(["arc", "--config", config, "--set", bad], capsys)
        assert rc == 2 and needle in one_error_line(err), err
    rc, _, _ = run(["arc", "--resume", "--run-dir", str(tmp_path), "--set", "max_hours=0.5"], capsys)
    assert seen["cfg"] is None and seen["overrides"] == {"max_hours": 0.5}  # resume: passed on to be checked there


def test_drift_refuses_bad_arguments_before_streaming(tmp_path, capsys):
    rc, _, err = run(["drift", "--minutes", "0.2", "--window", "30"], capsys)
    assert rc == 2 and one_error_line(err).startswith("--window must be positive")
    rc, _, err = run(["drift", "--minutes", "0.5", "--window", "10", "--compare", str(tmp_path)], capsys)
    msg = one_error_line(err)
    assert rc == 2 and msg.startswith("--compare drift JSON file not found") and msg.endswith(str(tmp_path))
    rc, _, err = run(["drift", "--minutes", "0.5", "--window", "10", "--data", str(tmp_path / "none")], capsys)
    assert rc == 2 and one_error_line(err).startswith(f"--data {tmp_path / 'none'}: no such folder")


def test_a_multi_line_user_error_is_printed_on_one_line(monkeypatch, capsys):
    def fail(args):
        raise UsageError("first line\n  second line")

    monkeypatch.setattr("lmdm.cli.generate.run", fail)
    rc, out, err = run(["generate", PROMPT], capsys)
    assert (rc, out, err) == (2, "", "lmdm: error: first line second line\n")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", PROMPT, "--steps", "two"])
    assert e.value.code == 2 and "invalid int value: 'two'" in capsys.readouterr().err


def test_console_script_entry_point_runs(tmp_path):
    """The installed command itself answers bad input with one line and status 2."""
    p = subprocess.run([sys.executable, "-m", "lmdm", "drift", "--minutes", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr == "lmdm: error: --minutes must be in (0, 60], got 0.0\n"


# ---- bugs: traceback, one line saying so, status 1 ---------------------------------------------------------------
@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), ValueError("bad shape"),
                                 TypeError("not a tensor"), KeyError("missing"), FileNotFoundError("gone")])
def test_any_other_exception_is_reported_as_a_bug(monkeypatch, capsys, exc):
    def buggy(args):
        raise exc

    monkeypatch.setattr("lmdm.cli.generate.run", buggy)
    rc, _, err = run(["generate", PROMPT], capsys)
    lines = err.splitlines()
    assert rc == 1
    assert lines[0] == "Traceback (most recent call last):" and "in buggy" in err
    assert lines[-2].startswith(type(exc).__name__) and lines[-1] == BUG_LINE
    assert "lmdm: error" not in err


def test_a_bug_in_a_subprocess_keeps_its_traceback(tmp_path):
    code = ("import sys, lmdm.cli.generate as g\n"
            "def boom(args): return 1 / 0\n"
            "g.run = boom\n"
            "from lmdm.cli import main\n"
            "sys.exit(main(['generate', 'x']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1 and "ZeroDivisionError" in p.stderr and p.stderr.rstrip().endswith(BUG_LINE)


def test_interrupt(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("lmdm.cli.jam.run", interrupted)
    rc, _, err = run(["jam", "--input", "x.wav"], capsys)
    assert (rc, err) == (130, "lmdm: interrupted\n")


# ---- sampler options: declared once, per-command defaults ----------------------------------------------------------
SAMPLER_COMMANDS = {
    "generate": (["generate", PROMPT], SamplerConfig(steps=8, sampler="pingpong", cfg_scale=2.0, seed=0)),
    "sketch": (["sketch", "s.json"], SamplerConfig(steps=8, sampler="pingpong", cfg_scale=5.5, seed=0)),
    "jam": (["jam", "--input", "x.wav"], SamplerConfig(steps=4, sampler="pingpong", cfg_scale=1.0, seed=0)),
    "drift": (["drift"], SamplerConfig(steps=8, sampler="pingpong", cfg_scale=2.0, seed=0)),
}


#: commands whose sampler defaults are the checkpoint's (``info["sampler"]``), else ``SamplerConfig()``'s
FROM_CHECKPOINT = ("generate", "drift", "eval")


@pytest.mark.parametrize("command", FROM_CHECKPOINT)
def test_checkpoint_commands_take_the_checkpoints_sampler_unless_told_otherwise(command):
    argv = SAMPLER_COMMANDS[command][0] if command in SAMPLER_COMMANDS else [command]
    args = build_parser().parse_args(argv)
    assert all(getattr(args, k) is None for k in ("steps", "sampler", "cfg_scale", "eta")) and args.seed == 0
    arc = {"sampler": {"sampler": "pingpong", "steps": 4, "cfg_scale": 1.0}}  # what lmdm arc writes
    assert sampler_config(args, arc) == SamplerConfig(steps=4, cfg_scale=1.0)
    assert sampler_config(args, {"sampler": {"eta": 0.5}}) == SamplerConfig(eta=0.5)
    assert sampler_config(args, {}) == sampler_config(args) == SamplerConfig()  # a checkpoint that recommends none
    given = build_parser().parse_args([*argv, "--steps", "3", "--eta", "1", "--seed", "9"])
    assert sampler_config(given, arc) == SamplerConfig(steps=3, cfg_scale=1.0, eta=1.0, seed=9)  # the options win
    with pytest.raises(ConfigError, match="info.sampler"):
        sampler_config(args, {"sampler": {"seed": 3}})  # the seed is the user's, never a checkpoint's


def test_the_bundled_checkpoints_recommend_their_measured_samplers():
    from lmdm.checkpoint import read_config, repo_root
    from lmdm.streaming.streamer import checkpoint_sampler

    root = repo_root() / "data" / "checkpoints"
    base = read_config(root / "lmdm-small")
    assert checkpoint_sampler(base["info"]) == SamplerConfig(eta=0.5)  # README, "Fresh noise"
    assert base["info"]["sampler"] == json.loads((repo_root() / "configs" / "lmdm-small.json").read_text())["sampler"]
    assert checkpoint_sampler(read_config(root / "lmdm-small-arc")["info"]) == SamplerConfig(steps=4, cfg_scale=1.0)


@pytest.mark.parametrize("command", SAMPLER_COMMANDS)
def test_sampler_options_have_per_command_defaults_and_reach_the_config(command):
    argv, default = SAMPLER_COMMANDS[command]
    assert sampler_config(build_parser().parse_args(argv)) == default
    given = build_parser().parse_args([*argv, "--steps", "3", "--sampler", "euler", "--cfg", "0.5", "--seed", "9"])
    assert sampler_config(given) == SamplerConfig(steps=3, sampler="euler", cfg_scale=0.5, seed=9)


def test_command_defaults_match_the_library_defaults():
    from lmdm.control.evaluate import SKETCH_SAMPLER

    assert SAMPLER_COMMANDS["sketch"][1] == SKETCH_SAMPLER
    assert SAMPLER_COMMANDS["generate"][1] == SamplerConfig()


def _flags_declared(path: Path) -> set[str]:
    """String literals passed as the first argument of ``add_argument`` in a module."""
    tree = ast.parse(path.read_text())
    return {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "attr", "") ==
            "add_argument" and c.args and isinstance(c.args[0], ast.Constant)}


def test_sampler_options_are_declared_once():
    assert set(FLAGS) == {"steps", "sampler", "cfg_scale", "seed", "eta", "cfg_t_min", "cfg_t_max"}
    flags = {flag for flag, _ in FLAGS.values()}
    for command in SAMPLER_COMMANDS:
        module = CLI / f"{command}.py"
        assert not _flags_declared(module) & flags, f"{module.name} declares sampler options itself"
        assert "add_sampler_options" in module.read_text()
    assert "--sampler" not in "".join(p.read_text() for p in CLI.glob("*.py") if p.name != "options.py")


def test_sampler_ranges_are_checked_by_the_sampler_config_only(tmp_path, capsys):
    """argparse accepts any integer; SamplerConfig refuses 0 steps as a user error (one line, status 2)."""
    assert build_parser().parse_args(["generate", PROMPT, "--steps", "0"]).steps == 0
    rc, _, err = run(["generate", PROMPT, "--steps", "0", "--out", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "steps must be" in one_error_line(err)
    rc, _, err = run(["generate", PROMPT, "--sampler", "heun", "--out", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "heun" in one_error_line(err)
    rc, _, err = run(["generate", PROMPT, "--eta", "1.5", "--out", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "eta must be a number from 0 to 1" in one_error_line(err)
    assert build_parser().parse_args(["eval", "--eta", "0.5"]).eta == 0.5


def test_every_command_module_is_registered():
    modules = {p.stem for p in CLI.glob("*.py")} - {"__init__", "options"}
    assert modules == {m.__name__.rsplit(".", 1)[1] for m in lmdm.cli.COMMANDS}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"data", "autoencoder", "train", "generate", "bench", "sketch", "sketch-eval", "jam",
                                "arc", "soup", "metrics", "drift", "drift-study", "eval"}
