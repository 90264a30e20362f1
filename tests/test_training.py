"""The one training loop and pretraining on the real two-work data: the loss goes down, LR and EMA follow their
formulas, checkpoints resume exactly (an interrupted save leaves the previous one loadable), bad configs are
refused."""
import csv
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmdm.audio.codec import MelCodec
from lmdm.checkpoint import load_checkpoint
from lmdm.config import ConfigError, load_json, to_dict
from lmdm.model.dit import DiT
from lmdm.streaming.level_guard import FRAME_QUANTILE, latent_set_ceiling
from lmdm.train import state as train_state
from lmdm.train.config import TrainConfig
from lmdm.train.dataset import load_latent_set
from lmdm.train.loop import LoopSettings, Task, run_loop, warmup_cosine
from lmdm.train.pretrain import TrainError, ema_decay_at, lr_at, train, validation_loss
from lmdm.train.state import latest_checkpoint, load_training_state, save_training_state
from tests.conftest import tiny_train_config

# ---- the loop on a toy task: known answers, exact resume ------------------------------------------------------
TOY_STEPS, TOY_LR = 12, 0.1


def toy_run(run: Path, record: list, interrupt_at: int | None = None, resume: bool = False,
            columns=(("loss", ".8f"), ("lr", ".8e"))):
    """A linear regression trained by the loop with AdamW, warm-up + cosine LR and a warm-up EMA; ``record`` gets
    ``(step, lr, loss, ema weight, weight)`` per step."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1, bias=False)
    opt = torch.optim.AdamW(lin.parameters(), lr=TOY_LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def train_step(state):
        if state.step == interrupt_at:
            raise KeyboardInterrupt
        x = torch.randn(5, 3, generator=gen)  # the run's RNG: a resume must restore it
        loss = (lin(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        opt.step()
        return {"loss": loss.item(), "lr": lr}

    def validate(state):
        record.append((state.step, state.last["lr"], state.last["loss"], state.ema.weight.detach().clone(),
                       lin.weight.detach().clone()))

    task = Task(modules={"model": lin}, optimizers={"": opt}, generator=gen, train_step=train_step,
                save_model=lambda path, m, info: path, export_info=lambda state: {},
                ema_decay=lambda n: min(0.9, (1 + n) / (10 + n)),
                lr_factor={"": lambda s: warmup_cosine(s, 4, TOY_STEPS, 0.1)}, validate=validate)
    settings = LoopSettings(run_dir=run, steps=TOY_STEPS, ckpt_every=4, log_every=1, keep_checkpoints=3,
                            columns=columns, progress=False)
    initial = lin.weight.detach().clone()
    out = run_loop(settings, task, resume_from=latest_checkpoint(run) if resume else None)
    return out, initial, opt


def test_loop_lr_and_ema_follow_their_formulas(tmp_path):
    record = []
    out, w0, _ = toy_run(tmp_path / "run", record)
    assert [r[0] for r in record] == list(range(1, TOY_STEPS + 1)) and out.state.step == TOY_STEPS
    lrs = [r[1] for r in record]
    # warm-up 4 steps, then cosine to 0.1 x over steps 4..12 (step 8: halfway, 0.1 + 0.9 * 0.5)
    known = {0: 0.025, 1: 0.05, 3: 0.1, 4: 0.1, 8: 0.055, 11: 0.1 * (0.1 + 0.45 * (1 + math.cos(7 * math.pi / 8)))}
    for s, lr in known.items():
        assert lrs[s] == pytest.approx(lr, rel=1e-6), s
    # EMA: update 0 copies the initial weights, update n has decay min(0.9, (1 + n) / (10 + n))
    assert torch.allclose(record[0][3], 2 / 11 * w0 + 9 / 11 * record[0][4], atol=1e-7)
    ema = w0.double()
    for n, (_, _, _, got, w) in enumerate(record, start=1):
        d = min(0.9, (1 + n) / (10 + n))
        ema = d * ema + (1 - d) * w.double()
        assert torch.allclose(got.double(), ema, atol=1e-6), n
    # the pretraining hooks are these formulas
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1, ema_decay=0.999)
    assert [lr_at(s, cfg) for s in (0, 9, 10, 55, 100)] == pytest.approx([1e-4, 1e-3, 1e-3, 5.5e-4, 1e-4])
    assert [ema_decay_at(n, cfg) for n in (1, 10, 10_000)] == pytest.approx([2 / 11, 11 / 20, 0.999])


def test_loop_resumes_after_an_interrupt_exactly_as_the_uninterrupted_run(tmp_path):
    straight, resumed = [], []
    out_a, _, opt_a = toy_run(tmp_path / "a", straight)
    with pytest.raises(KeyboardInterrupt):
        toy_run(tmp_path / "b", resumed, interrupt_at=7)
    assert latest_checkpoint(tmp_path / "b").name == "step-000007"  # saved on the interrupt
    out_b, _, opt_b = toy_run(tmp_path / "b", resumed, resume=True)
    assert [r[0] for r in resumed] == list(range(1, TOY_STEPS + 1))
    for a, b in zip(straight, resumed):  # LR, loss (so data and RNG), EMA and weights at every step
        assert a[1] == b[1] and a[2] == pytest.approx(b[2], rel=1e-6, abs=1e-9)
        assert torch.allclose(a[3], b[3], atol=1e-7) and torch.allclose(a[4], b[4], atol=1e-7)
    sa, sb = opt_a.state_dict()["state"][0], opt_b.state_dict()["state"][0]
    assert all(torch.allclose(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])) for k in sa)
    with open(tmp_path / "a" / "log.csv") as fa, open(tmp_path / "b" / "log.csv") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["step"] for r in rows_b] == [str(s) for s in range(1, TOY_STEPS + 1)]
    assert [(r["loss"], r["lr"]) for r in rows_a] == [(r["loss"], r["lr"]) for r in rows_b]
    assert out_b.state.latest == out_a.state.latest


def test_a_resume_whose_code_logs_other_metrics_keeps_the_runs_own_header(tmp_path):
    """A run resumed after the code gained a metric and reordered its columns appends rows under the header the
    run began with: every row has the header's fields, and the values stay in their columns."""
    straight, resumed = [], []
    toy_run(tmp_path / "a", straight)
    with pytest.raises(KeyboardInterrupt):
        toy_run(tmp_path / "b", resumed, interrupt_at=7)
    toy_run(tmp_path / "b", resumed, resume=True, columns=(("new", ".3f"), ("lr", ".8e"), ("loss", ".8f")))
    with open(tmp_path / "a" / "log.csv") as fa, open(tmp_path / "b" / "log.csv") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert all(None not in r and list(r) == ["step", "loss", "lr", "elapsed_s"] for r in rows_b)
    assert [(r["loss"], r["lr"]) for r in rows_a] == [(r["loss"], r["lr"]) for r in rows_b]


def test_a_resume_on_another_device_type_warns_that_the_numerics_change(tmp_path):
    import warnings

    toy_run(tmp_path / "run", [])
    state_file = latest_checkpoint(tmp_path / "run") / "state.json"
    saved = json.loads(state_file.read_text())
    assert saved["device"] == "cpu"  # the device type is part of the training state
    state_file.write_text(json.dumps(saved | {"device": "cuda"}))
    with pytest.warns(UserWarning, match="was trained on cuda and resumes on cpu: the numerics differ"):
        toy_run(tmp_path / "run", [], resume=True)
    del saved["device"]  # a checkpoint written before the device was saved: CPU-only code, no warning on the CPU
    state_file.write_text(json.dumps(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        toy_run(tmp_path / "run", [], resume=True)


def test_an_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(lin.parameters())
    gen = torch.Generator().manual_seed(0)
    lin(torch.ones(1, 2)).sum().backward()
    opt.step()
    saved = {k: v.clone() for k, v in lin.state_dict().items()}
    save_training_state(tmp_path, 4, {"model": lin}, lin.state_dict(), {"": opt}, gen, {"note": "four"})
    real_save = train_state.save_file
    calls = []

    def dies_on_second_file(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed half way through writing
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(train_state, "save_file", dies_on_second_file)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(1.0)
    for step in (8, 4):  # a newer checkpoint, and the same step again: neither may damage step 4
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            save_training_state(tmp_path, step, {"model": lin}, lin.state_dict(), {"": opt}, gen, {"note": "x"})
        assert Path(calls[0]).parent.name.startswith(f".step-{step:06d}.tmp")  # written under a temporary name
        assert latest_checkpoint(tmp_path).name == "step-000004"
        assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-000004"]
    fresh = torch.nn.Linear(2, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    ema, st = load_training_state(latest_checkpoint(tmp_path), {"model": fresh}, {"": fresh_opt},
                                  torch.Generator())
    assert st["step"] == 4 and st["note"] == "four"
    assert all(torch.equal(fresh.state_dict()[k], saved[k]) and torch.equal(ema[k], saved[k]) for k in saved)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].abs().sum() > 0


# ---- pretraining on real data -----------------------------------------------------------------------------------


def test_loss_decreases_within_a_few_dozen_steps(real_data, tmp_path):
    cfg = tiny_train_config(real_data, tmp_path / "run", steps=40)
    data = load_latent_set(cfg.data, cfg.codec, progress=False)
    torch.manual_seed(0)
    untrained = validation_loss(DiT(cfg.model), data, data.valid_starts("train", cfg.crop_frames), cfg)
    result = train(cfg, progress=False)
    assert result.step == 40
    assert result.val_loss < 0.8 * untrained, (untrained, result.val_loss)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    # the export stores the training split's loudest 0.4 s and its FRAME_QUANTILE 16 ms frame, the level guard's
    # ceilings (lmdm.streaming.level_guard); a single frame can be louder than any 0.4 s window, never quieter
    info = load_checkpoint(tmp_path / "run" / "final").info
    assert info["level_ceiling"] == latent_set_ceiling(MelCodec(cfg.codec), data)
    assert info["frame_level_ceiling"] == latent_set_ceiling(MelCodec(cfg.codec), data, FRAME_QUANTILE, frames=1)
    assert latent_set_ceiling(MelCodec(cfg.codec), data, 1.0, frames=1) >= info["level_ceiling"]
    assert [h["step"] for h in result.history] == [20, 40] and result.history[-1]["val_loss"] == result.val_loss
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "mode", "loss", "lr", "val_loss", "elapsed_s", "tokens_per_s"]
    assert [float(r["lr"]) for r in rows[:6]] == pytest.approx([4e-4, 8e-4, 1.2e-3, 1.6e-3, 2e-3, 2e-3])


def _weights(run_dir, name="model"):
    return load_file(str(latest_checkpoint(run_dir) / f"{name}.safetensors"))


def test_resume_continues_from_the_saved_step_exactly(real_data, tmp_path):
    """Resuming from the step-20 checkpoint of a 30-step run reproduces that run's losses, weights and EMA."""
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
        rows = list(csv.DictReader(f))
    with open(tmp_path / "straight" / "log.csv") as f:
        straight_rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows[-10:]] == list(range(21, 31))
    assert [(r["mode"], r["lr"]) for r in rows[-10:]] == [(r["mode"], r["lr"]) for r in straight_rows[-10:]]
    assert [float(r["loss"]) for r in rows[-10:]] == pytest.approx([float(r["loss"]) for r in straight_rows[-10:]],
                                                                   rel=1e-4)
    for name in ("model", "ema"):
        a, b = _weights(tmp_path / "straight", name), _weights(resumed, name)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


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
    with pytest.raises(TrainError, match=r"differs.*\['batch_size'\]"):
        train(cfg, resume=True, progress=False, overrides={"batch_size": 4})
    with pytest.raises(ConfigError, match="stepz"):
        train(cfg, resume=True, progress=False, overrides={"stepz": 4})
    with pytest.raises(TrainError, match="nothing to resume"):
        train(None, resume=True, run_dir=tmp_path / "empty", progress=False)


def test_invalid_configs_raise_config_errors():
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="unknown mode"):
        TrainConfig(mode_mix={"causal": 1.0})


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
