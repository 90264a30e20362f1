"""Training on the real two-work data: the loss goes down, checkpoints resume exactly, bad configs are refused."""
import csv
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from lmdm.config import ConfigError, load_json, to_dict
from lmdm.model.dit import DiT
from lmdm.train.config import TrainConfig
from lmdm.train.dataset import load_latent_set
from lmdm.train.state import latest_checkpoint
from lmdm.train.pretrain import TrainError, validation_loss, train
from tests.conftest import tiny_train_config


def test_loss_decreases_within_a_few_dozen_steps(real_data, tmp_path):
    cfg = tiny_train_config(real_data, tmp_path / "run", steps=40)
    data = load_latent_set(cfg.data, cfg.codec, progress=False)
    torch.manual_seed(0)
    untrained = validation_loss(DiT(cfg.model), data, data.valid_starts("train", cfg.crop_frames), cfg)
    result = train(cfg, progress=False)
    assert result.step == 40
    assert result.val_loss < 0.8 * untrained, (untrained, result.val_loss)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def test_resume_continues_from_the_saved_step_exactly(real_data, tmp_path):
    """Resuming from the step-20 checkpoint of a 30-step run reproduces that run's step-30 weights."""
    import shutil

    cfg = tiny_train_config(real_data, tmp_path / "straight", steps=30)
    train(cfg, progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    shutil.rmtree(resumed / "ckpt" / "step-000030")
    (resumed / "ckpt" / "latest").write_text("step-000020")
    result = train(replace(cfg, run_dir=str(resumed)), resume=True, progress=False)
    assert result.step == 30
    with open(resumed / "log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps[-10:] == list(range(21, 31))
    a, b = _weights(tmp_path / "straight"), _weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_after_a_kill_loses_nothing_beyond_the_last_checkpoint(real_data, tmp_path):
    run = tmp_path / "killed"
    cfg = tiny_train_config(real_data, run, steps=100_000, ckpt_every=5)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(cfg)))
    proc = subprocess.Popen([sys.executable, "-m", "lmdm", "--quiet", "train", "--config", str(cfg_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (latest_checkpoint(run) is None or latest_checkpoint(run).name < "step-000010"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = latest_checkpoint(run)
    assert saved is not None, proc.stderr.read().decode()
    saved_step = json.loads((saved / "state.json").read_text())["step"]
    result = train(replace(cfg, steps=saved_step + 3), resume=True, progress=False)
    assert result.step == saved_step + 3
    with open(run / "log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps[-3:] == [saved_step + 1, saved_step + 2, saved_step + 3]


def test_fresh_run_refuses_to_overwrite_checkpoints(real_data, tmp_path):
    cfg = tiny_train_config(real_data, tmp_path / "run", steps=2, ckpt_every=1, val_every=2)
    train(cfg, progress=False)
    with pytest.raises(TrainError, match="--resume"):
        train(cfg, progress=False)
    with pytest.raises(TrainError, match="differs"):
        train(replace(cfg, lr=1.0), resume=True, progress=False)


def test_unknown_config_keys_are_listed(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"stepz": 10}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\].*valid keys are:.*steps"):
        load_json(TrainConfig, f)
    f.write_text(json.dumps({"model": {"d_modle": 8}}))
    with pytest.raises(ConfigError, match="d_model"):
        load_json(TrainConfig, f)
    f.write_text(json.dumps({"mode_mix": {"causal": 1.0}}))
    with pytest.raises(ConfigError, match="block_causal"):
        load_json(TrainConfig, f)
