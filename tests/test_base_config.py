"""The scaled config (``configs/lmdm-base.json``): valid, about 100-150M parameters, counted on the meta device
(nothing is allocated and nothing trains it)."""
from pathlib import Path

import torch

from lmdm.config import load_json
from lmdm.model.dit import DiT
from lmdm.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def test_base_config_has_the_documented_size_and_geometry():
    cfg = load_json(TrainConfig, ROOT / "configs" / "lmdm-base.json")
    with torch.device("meta"):
        n = DiT(cfg.model).num_params()
    assert n == 130_590_016 and 100e6 <= n <= 150e6  # the README states 130.6M
    assert cfg.model.latent_channels == 64 and cfg.autoencoder is not None
    assert cfg.model.block_frames / cfg.codec.frame_rate == 2.048  # s per block; public LMDM 2.2 s
    assert cfg.model.context_frames / cfg.codec.frame_rate == 8.192  # s of context; public LMDM 8.9 s
