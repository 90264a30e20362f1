"""Data-parallel training on CPU with gloo, started by torchrun as a user would (``lmdm.train.distributed``).

A 2-process run with the same global batch (4 crops: 2 per rank, each rank in 2 micro-batches of 1 with gradient
accumulation) and seed as a 1-process run (one pass of 4) sees the same crops and noise, so after 6 steps its
losses, validation loss and parameters equal the 1-process run's up to the order of floating-point sums
(tolerance: 1e-5 relative on losses; 5e-5 absolute on parameters, whose largest are ~1 and which these steps move
by ~1e-2; measured differences ~3e-6). A checkpoint of the
2-process run then resumes in 1 process from its step and ends where the 1-process run ended.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmdm.config import to_dict
from lmdm.errors import UsageError
from lmdm.train.distributed import SINGLE, Distributed, batch_plan, setup_distributed
from tests.conftest import tiny_train_config

ROOT = Path(__file__).resolve().parent.parent


def _cfg(data, run):
    # every layout is drawn in 6 steps (seed 0); validation at step 3 and 6
    return tiny_train_config(data, run, steps=6, batch_size=4, ckpt_every=2, val_every=3, keep_checkpoints=3,
                             warmup_steps=2, threads=1)


def _torchrun(config: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lmdm", "--quiet", "train", "--config", str(config), "--device", "cpu", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _state(run: Path, step: int):
    ck = run / "ckpt" / f"step-{step:06d}"
    return load_file(str(ck / "model.safetensors")), json.loads((ck / "state.json").read_text())


def test_batch_plan_keeps_the_global_batch():
    two = [batch_plan(8, Distributed(rank=r, world_size=2), micro_batch=2) for r in range(2)]
    assert [p.rows for p in two] == [slice(0, 4), slice(4, 8)] and two[0].accum == 2
    assert [g for p in two for _, g in p.micro()] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert batch_plan(8, SINGLE).accum == 1 and batch_plan(8, SINGLE).micro() == [(slice(0, 8), slice(0, 8))]
    with pytest.raises(UsageError, match="not a multiple of the 3 processes"):
        batch_plan(8, Distributed(rank=0, world_size=3))
    with pytest.raises(UsageError, match="micro_batch 3 must divide"):
        batch_plan(8, Distributed(rank=0, world_size=2), micro_batch=3)


def test_a_micro_batch_larger_than_a_ranks_share_means_one_pass():
    # a run of 1 process in micro-batches of 16 (batch 64) resumes on 8 processes of 8 crops: same global batch
    eight = [batch_plan(64, Distributed(rank=r, world_size=8), micro_batch=16) for r in range(8)]
    assert all(p.micro_batch == 8 and p.accum == 1 and p.per_rank == 8 for p in eight)
    assert [g for p in eight for _, g in p.micro()] == [slice(8 * r, 8 * r + 8) for r in range(8)]
    assert batch_plan(64, SINGLE, micro_batch=16).accum == 4


def _main_first_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    d, out = Distributed(rank=rank, world_size=2), Path(out)
    seen = []
    with d.main_first():  # rank 0 writes, then rank 1 reads
        if rank == 0:
            (out / "cache").write_text("built")
        seen.append((out / "cache").read_text())
    try:
        with d.main_first():
            if rank == 0:
                raise OSError("disk full")
        seen.append("went on")
    except Exception as e:
        seen.append(f"{type(e).__name__}: {e}")
    (out / f"rank{rank}").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_main_first_runs_rank0_first_and_passes_its_failure_on(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_main_first_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}").read_text()) for r in range(2))
    assert r0 == ["built", "OSError: disk full"]
    assert r1[0] == "built" and r1[1].startswith("DistributedError: rank 0 failed while preparing the run")


def test_the_process_group_waits_long_enough_for_rank0_to_build_the_cache(monkeypatch):
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw["timeout"])))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert setup_distributed("cpu").world_size == 2
    monkeypatch.setenv("LMDM_DIST_TIMEOUT_MIN", "90")
    setup_distributed("cpu")
    assert [(b, t.total_seconds() / 60) for b, t in calls] == [("gloo", 60.0), ("gloo", 90.0)]
    monkeypatch.setenv("LMDM_DIST_TIMEOUT_MIN", "an hour")
    with pytest.raises(UsageError, match="LMDM_DIST_TIMEOUT_MIN must be a number"):
        setup_distributed("cpu")


def test_two_processes_train_like_one_and_resume_on_one(real_data, tmp_path):
    from lmdm.train.pretrain import train

    single = _cfg(real_data, tmp_path / "single")
    one = train(single, progress=False, device="cpu")  # also builds the data cache the two ranks then read
    assert one.step == 6

    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(to_dict(_cfg(real_data, tmp_path / "ddp")) | {"micro_batch": 1}))
    proc = _torchrun(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("inference checkpoint") == 1  # only rank 0 reports
    ddp = tmp_path / "ddp"
    assert (ddp / "final" / "model.safetensors").is_file()
    assert not list(ddp.glob("ckpt/.step-*"))  # no half-written checkpoint of a second writer

    moved = max(float((a - b).abs().max()) for a, b in zip(_state(tmp_path / "single", 2)[0].values(),
                                                             _state(tmp_path / "single", 6)[0].values()))
    assert moved > 1e-3  # the steps change the weights far beyond the tolerance
    for step in (2, 4, 6):
        w1, s1 = _state(tmp_path / "single", step)
        w2, s2 = _state(ddp, step)
        assert s2["last"]["mode"] == s1["last"]["mode"]
        assert s2["last"]["loss"] == pytest.approx(s1["last"]["loss"], rel=1e-5)
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], atol=5e-5, rtol=0)
    assert [h["step"] for h in s2["history"]] == [3, 6]
    for h1, h2 in zip(s1["history"], s2["history"]):
        assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-5)
    rows = (ddp / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]

    # the 2-process checkpoint of step 4 resumes in 1 process and ends where the 1-process run ended
    shutil.rmtree(ddp / "ckpt" / "step-000006")
    (ddp / "ckpt" / "latest").unlink()
    resumed = train(None, resume=True, run_dir=ddp, progress=False, device="cpu")
    assert resumed.step == 6
    w1, s1 = _state(tmp_path / "single", 6)
    w3, s3 = _state(ddp, 6)
    assert s3["last"]["loss"] == pytest.approx(s1["last"]["loss"], rel=1e-5)
    for k in w1:
        torch.testing.assert_close(w3[k], w1[k], atol=5e-5, rtol=0)


def test_arc_on_two_processes_resumes_on_one(real_data, tmp_path):
    from lmdm.audio.codec import CodecConfig, MelCodec
    from lmdm.checkpoint import save_checkpoint
    from lmdm.train.arc.trainer import ARCConfig, arc_train
    from tests.test_arc import tiny_student

    base = tmp_path / "base"
    save_checkpoint(base, tiny_student(), MelCodec(CodecConfig()), dtype=torch.float32)
    run = tmp_path / "arc"
    cfg = ARCConfig(init_from=str(base), data=str(real_data), run_dir=str(run), steps=2, batch_size=4,
                    rollout_blocks=2, student_steps=3, disc_layers=1, disc_head_width=16, ckpt_every=1, log_every=1,
                    threads=1)
    config = tmp_path / "arc.json"
    config.write_text(json.dumps(to_dict(cfg)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # lmdm's command line, which also writes each rank's weights after the loop (tests/support/rank_weights.py)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(ROOT / "tests" / "support" / "rank_weights.py"), "--quiet", "arc", "--config",
                           str(config), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("post-trained checkpoint") == 1  # only rank 0 reports
    w0 = load_file(str(base / "model.safetensors"))
    w2, s2 = _state(run, 2)
    assert s2["step"] == 2 and all(k in s2["last"] for k in ("loss_g", "loss_d", "loss_c"))
    assert any(not torch.equal(w0[k], w2[k]) for k in w0)  # the student was trained
    # both players' gradients were all-reduced: the ranks trained on different rows and rollouts, yet every
    # parameter of the student and of the discriminator is the same on both (and rank 0's is the checkpoint's)
    ranks = [load_file(str(run / f"rank-{r}.safetensors")) for r in range(2)]
    assert any(k.startswith("model.") for k in ranks[0]) and any(k.startswith("disc.") for k in ranks[0])
    assert ranks[0].keys() == ranks[1].keys()
    assert [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])] == []
    assert all(torch.equal(ranks[0][f"model.{k}"], w2[k]) for k in w2)
    r = arc_train(None, resume=True, run_dir=run, overrides={"steps": 3}, progress=False, device="cpu")
    assert r.step == 3 and _state(run, 3)[1]["step"] == 3
