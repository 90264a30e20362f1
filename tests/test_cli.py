"""`lmdm generate` on the bundled checkpoint, and clear errors (not tracebacks) for bad input."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from lmdm.checkpoint import default_checkpoint
from lmdm.cli import main

PROMPT = "a slow Bach chorale on church organ"


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def generate(tmp_path, capsys, name, *extra, prompt=PROMPT, seconds="3"):
    out = tmp_path / name
    rc, stdout, stderr = run(["--quiet", "generate", prompt, "--seconds", seconds, "--out", str(out), *extra], capsys)
    assert rc == 0, stderr
    audio, sr = sf.read(out)
    return audio, sr, stdout, stderr


def test_generate_writes_finite_non_silent_audio_of_the_requested_length(tmp_path, capsys):
    audio, sr, stdout, _ = generate(tmp_path, capsys, "a.wav", seconds="3.5")
    assert sr == 16000 and audio.ndim == 1 and len(audio) == 56000
    assert np.isfinite(audio).all()
    assert np.sqrt(np.mean(audio**2)) > 0.01
    assert "real-time factor" in stdout and "bootstrap" in stdout and "fused first step" in stdout
    assert "subsequent steps" in stdout


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
    assert "truncated" in stderr


@pytest.mark.parametrize("seconds", ["0", "-2", "nan"])
def test_bad_seconds(tmp_path, capsys, seconds):
    rc, _, err = run(["generate", PROMPT, "--seconds", seconds, "--out", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "seconds must be a positive number" in err


def test_unwritable_output(tmp_path, capsys):
    rc, _, err = run(["generate", PROMPT, "--seconds", "1", "--out", str(tmp_path / "no" / "such" / "x.wav")], capsys)
    assert rc == 2 and "does not exist" in err
    rc, _, err = run(["generate", PROMPT, "--seconds", "1", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "is a folder" in err


def test_missing_checkpoint(tmp_path, capsys):
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(tmp_path / "nope")],
                     capsys)
    assert rc == 2 and "checkpoint not found" in err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(default_checkpoint(), bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(bad)], capsys)
    assert rc == 2 and "corrupt" in err
    (bad / "config.json").write_text("{not json")
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(bad)], capsys)
    assert rc == 2 and "not valid JSON" in err


def test_checkpoint_config_with_unknown_keys(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(default_checkpoint(), bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["model"]["n_layerz"] = 3
    (bad / "config.json").write_text(json.dumps(meta))
    rc, _, err = run(["generate", PROMPT, "--out", str(tmp_path / "x.wav"), "--checkpoint", str(bad)], capsys)
    assert rc == 2 and "n_layerz" in err and "valid keys are" in err


def test_train_config_with_unknown_keys(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"batchsize": 4}))
    rc, _, err = run(["train", "--config", str(cfg)], capsys)
    assert rc == 2 and "batchsize" in err and "batch_size" in err


def test_console_script_entry_point_runs(tmp_path):
    """The installed command itself answers bad input with one line and status 2."""
    p = subprocess.run([sys.executable, "-m", "lmdm", "generate", PROMPT, "--seconds", "0"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and p.stderr.startswith("lmdm: error:") and "Traceback" not in p.stderr


def test_sketch_command_renders_and_reports_following(tmp_path, capsys):
    from lmdm.control.sketch import synthetic_sketches

    sk = tmp_path / "s.json"
    sk.write_text(json.dumps(synthetic_sketches(1, 3.0)[0]))
    rc, out, err = run(["--quiet", "sketch", str(sk), "--prompt", "solo flute", "--out", str(tmp_path / "s.wav")], capsys)
    assert rc == 0, err
    audio, sr = sf.read(tmp_path / "s.wav")
    assert len(audio) == 3 * sr and "correlation" in out
    (tmp_path / "bad.json").write_text(json.dumps({"strokes": [], "scale": 5}))
    rc, _, err = run(["sketch", str(tmp_path / "bad.json"), "--out", str(tmp_path / "b.wav"), "--seconds", "2"], capsys)
    assert rc == 2 and "scale must be text" in err


def test_jam_command_writes_aligned_answer_and_mix(tmp_path, capsys):
    from lmdm.data.example import EXAMPLE_PATH

    out, mix = tmp_path / "jam.wav", tmp_path / "mix.wav"
    rc, stdout, err = run(["--quiet", "jam", "--input", str(EXAMPLE_PATH), "--prompt", "string ensemble",
                           "--out", str(out), "--mix", str(mix)], capsys)
    assert rc == 0, err
    a, sr = sf.read(out)
    m, _ = sf.read(mix)
    assert m.shape == (len(a), 2) and np.isfinite(a).all() and np.sqrt(np.mean(a**2)) > 0.005
    assert "latency" in stdout and "real-time factor" in stdout and "underruns" in stdout
    rc, _, err = run(["jam", "--input", str(tmp_path / "none.wav"), "--out", str(tmp_path / "x.wav")], capsys)
    assert rc == 2 and "not found" in err


def test_drift_refuses_a_window_longer_than_the_stream(tmp_path, capsys):
    rc, _, err = run(["drift", "--minutes", "0.2", "--window", "30"], capsys)
    assert rc == 2 and "--window" in err
    rc, _, err = run(["drift", "--minutes", "0.5", "--window", "10", "--compare", str(tmp_path)], capsys)
    assert rc == 2 and "--compare" in err
