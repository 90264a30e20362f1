"""Shared fixtures: a real two-work data set rendered with FluidSynth, and a tiny training config."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Two short real works from the music21 corpus: a Bach chorale and a German folk ballad.
TEST_WORKS = ("bach__bwv286", "essenFolksong__ballad10__0006")


def pytest_sessionstart(session):
    """Compile librosa's numba kernels in this one process before tests start kernels and subprocesses that
    would otherwise compile them concurrently (a race in numba's cache that segfaults; librosa_warmup)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from librosa_warmup import warm_up

    warm_up()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Prompt embeddings go to a per-session cache folder, never the user's."""
    os.environ["LMDM_CACHE"] = str(tmp_path_factory.mktemp("lmdm-cache"))


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path:
    """Render the two test works (cropped to 20 s) into a data folder."""
    from lmdm.data.build import BuildConfig, build

    out = tmp_path_factory.mktemp("music")
    report = build(BuildConfig(out=str(out), work_ids=TEST_WORKS, max_seconds=20.0, jobs=1), progress=False)
    assert report.built == 2 and report.failed == 0, report.failures
    return out


def tiny_train_config(data: Path, run_dir: Path, **overrides):
    from lmdm.audio.codec import CodecConfig
    from lmdm.model.config import DiTConfig
    from lmdm.train.config import TrainConfig

    base = dict(
        data=str(data), run_dir=str(run_dir),
        model=DiTConfig(d_model=64, n_layers=2, n_heads=2, block_frames=4, window_chunks=2),
        codec=CodecConfig(), steps=40, batch_size=8, train_chunks=4, lr=2e-3, warmup_steps=5,
        log_every=1, val_every=20, ckpt_every=10, val_batches=2, bf16=False, seed=0,
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_ckpt():
    """A tiny DiT (2 layers, width 32, 4-frame blocks, window 2) with random, non-zero weights everywhere, as an
    inference checkpoint: a freshly built DiT zero-initialises its output layers (its velocity is 0 whatever the
    prompt), which would let a prompt that never arrives pass unnoticed."""
    import torch

    from lmdm.audio.codec import CodecConfig, MelCodec
    from lmdm.checkpoint import Checkpoint
    from lmdm.model.config import DiTConfig
    from lmdm.model.dit import DiT

    torch.manual_seed(0)
    model = DiT(DiTConfig(d_model=32, n_layers=2, n_heads=2, block_frames=4, window_chunks=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Checkpoint(model=model.requires_grad_(False), codec=MelCodec(CodecConfig()))


@pytest.fixture(scope="session")
def both_splits(real_data, tmp_path_factory) -> Path:
    """A copy of the test data set with both works in train and, under other work ids, in val too (for code that
    needs a validation split; here it is the training music itself)."""
    import shutil

    import pandas as pd

    out = tmp_path_factory.mktemp("both-splits") / "music"
    shutil.copytree(real_data, out, ignore=shutil.ignore_patterns("cache"))
    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert set(df.split) == {"train"} and df.collection.nunique() == 2
    val = df.assign(split="val", work_id=df.work_id + "__val")
    pd.concat([df, val]).to_csv(out / "manifest.csv", index=False)
    return out
