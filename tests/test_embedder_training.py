"""The embedder trains on the one training loop: it learns what it is trained on and is saved loadable, a run
stopped after a checkpoint resumes to the same weights as an uninterrupted one, and its learning rate is the
loop's warm-up + cosine."""
import csv
import math
from dataclasses import replace

import pytest
import torch

import lmdm.metrics.embedder_training as et
from lmdm.audio.codec import CodecConfig
from lmdm.metrics.embedder import EmbedderConfig, load_embedder
from lmdm.metrics.embedder_training import EmbedderTrainingError, train_embedder
from lmdm.train.dataset import load_latent_set
from lmdm.train.loop import warmup_cosine
from lmdm.train.state import latest_checkpoint

CFG = EmbedderConfig(width=16, embed_dim=8, crop_frames=32, steps=40, batch_size=16, lr=5e-3)
KEYS = {"val_collection_accuracy", "val_instrument_accuracy", "chance_collection", "chance_instrument",
        "val_examples", "train_steps"}


def _weights(path):
    return load_embedder(path)[0].state_dict()


@pytest.fixture(scope="module")
def straight(both_splits, tmp_path_factory):
    """An uninterrupted run; records the learning rate of every optimiser step."""
    tmp = tmp_path_factory.mktemp("straight")
    lrs = []
    adamw_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return adamw_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", recording_step)
        metrics = train_embedder(both_splits, tmp / "emb", CFG, progress=False, run_dir=tmp / "run")
    return metrics, tmp / "emb", tmp / "run", lrs


def test_training_writes_a_loadable_embedder_that_beats_chance_on_its_training_music(straight, both_splits):
    metrics, out, run, _ = straight
    model, saved = load_embedder(out)
    assert set(metrics) == KEYS and saved == metrics and metrics["train_steps"] == CFG.steps
    assert model.cfg.collections == ("bach", "essenFolksong") and model.cfg.latent_channels == 512
    final = _weights(run / "final")  # the loop's own export is the same embedder
    assert all(torch.equal(a, final[k]) for k, a in model.state_dict().items())
    # accuracy on crops of the training split against always answering the class with the most crops
    data = load_latent_set(both_splits, CodecConfig(), progress=False)
    starts = data.valid_starts("train", CFG.crop_frames)
    coll_of = torch.tensor([0, 1, 0, 1])  # bach, folk song (train), then the same two in val
    x = data.latents[starts[:, None] + torch.arange(CFG.crop_frames)].float()
    y = coll_of[data.frame_work[starts].long()]
    with torch.no_grad():
        accuracy = (model(x)[1].argmax(1) == y).float().mean().item()
    majority = max(y.float().mean().item(), 1 - y.float().mean().item())
    assert accuracy > majority + 0.15 and accuracy > 0.9, (accuracy, majority)
    assert metrics["val_collection_accuracy"] > metrics["chance_collection"] == 0.5


def test_a_run_stopped_after_a_checkpoint_resumes_to_the_same_weights(straight, both_splits, tmp_path, monkeypatch):
    _, out_straight, _, _ = straight
    run, out = tmp_path / "run", tmp_path / "emb"
    calls, sample, resuming = [], et.sample_batch, False

    def counted_sample(*args):
        calls.append(1)
        if len(calls) == 16 and not resuming:  # the 16th step: five steps after the checkpoint of step 10
            raise RuntimeError("killed")
        return sample(*args)

    monkeypatch.setattr(et, "CKPT_EVERY", 10)
    monkeypatch.setattr(et, "sample_batch", counted_sample)
    with pytest.raises(RuntimeError, match="killed"):
        train_embedder(both_splits, out, CFG, progress=False, run_dir=run)
    assert latest_checkpoint(run).name == "step-000010" and not out.exists()
    with pytest.raises(EmbedderTrainingError, match="--resume"):  # a fresh run never overwrites one
        train_embedder(both_splits, out, CFG, progress=False, run_dir=run)
    with pytest.raises(EmbedderTrainingError, match="differs"):  # nor does a resume with other settings
        train_embedder(both_splits, out, replace(CFG, steps=50), progress=False, run_dir=run, resume=True)
    calls.clear()
    resuming = True
    metrics = train_embedder(both_splits, out, CFG, progress=False, run_dir=run, resume=True)
    assert len(calls) == CFG.steps - 10 + 20  # the steps after the checkpoint, then 20 validation batches
    resumed, uninterrupted = _weights(out), _weights(out_straight)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert metrics == straight[0]
    assert latest_checkpoint(run).name == f"step-{CFG.steps:06d}"


def test_learning_rate_is_the_loops_warmup_cosine(straight):
    _, _, run, lrs = straight
    assert len(lrs) == CFG.steps
    warmup = 4  # a tenth of the 40 steps (at most 100)
    assert lrs == [CFG.lr * warmup_cosine(s, warmup, CFG.steps, 0.0) for s in range(CFG.steps)]
    known = {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 22: 0.5, 39: 0.5 * (1 + math.cos(math.pi * 35 / 36))}
    for step, factor in known.items():
        assert lrs[step] == pytest.approx(CFG.lr * factor, rel=1e-12), step
    logged = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(open(run / "log.csv"))}
    assert logged[25] == pytest.approx(lrs[24], rel=1e-3)  # the log row of step 25 shows the LR that step used
