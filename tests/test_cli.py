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
