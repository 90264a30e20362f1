"""``scripts/loop_gain.py``: the bass level it reads and the return map it measures."""
from __future__ import annotations

import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.model.dit import DiT, DiTConfig
from lmdm.train.arc.level import DecodedMel, with_gain

SCRIPT = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "loop_gain.py"))


def test_band_level_reads_a_doubled_bass_as_six_db_and_leaves_the_treble_out():
    """Doubling a 60 Hz tone raises the level below 150 Hz by 6.02 dB; a 2 kHz tone added beside it does not
    move that level, and does raise the level over every band."""
    codec = MelCodec(CodecConfig())
    mel = DecodedMel(codec)
    t = torch.arange(codec.sample_rate * 2) / codec.sample_rate
    bass = 0.2 * torch.sin(2 * math.pi * 60 * t)[None]
    treble = 0.2 * torch.sin(2 * math.pi * 2000 * t)[None]
    latent = {name: codec.mel_to_latent(codec.audio_to_mel(a))
              for name, a in (("bass", bass), ("louder", 2 * bass), ("both", bass + treble))}
    level = SCRIPT["band_level_db"]
    doubled = float(level(latent["louder"], mel, 150.0) - level(latent["bass"], mel, 150.0))
    assert abs(doubled - 20 * math.log10(2)) < 0.05
    assert abs(float(level(latent["both"], mel, 150.0) - level(latent["bass"], mel, 150.0))) < 0.5
    assert float(level(latent["both"], mel, math.inf) - level(latent["bass"], mel, math.inf)) > 0.5


def test_return_map_kicks_the_context_and_measures_every_block_after_it():
    """The contexts' bass reads the gains they were kicked by (where no band sits at the floor), the map has one
    level per gain, window x seed and block, and the same seeds give the same map."""
    torch.manual_seed(0)
    codec = MelCodec(CodecConfig())
    model = DiT(DiTConfig(latent_channels=codec.channels, d_model=32, n_layers=2, n_heads=2, block_frames=4,
                          window_chunks=2)).eval()
    ckpt = SimpleNamespace(model=model, codec=codec)
    mel = DecodedMel(codec)
    # a context well above the log floor everywhere: the low shelf moves every bass value by the gain
    context = mel.encode(torch.full((3, 8 * codec.cfg.patch, codec.cfg.n_mels), 1.0) + 0.1 * torch.randn(3, 32, 128))
    assert torch.allclose(with_gain(context, mel, torch.zeros(3), 150.0), context, atol=1e-5)
    args = dict(prompt="a slow chorale", context=context, gains=[0.0, 10.0], seeds=[0, 1], steps=2, blocks=3,
                below_hz=150.0)
    r = SCRIPT["return_map"](ckpt, **args)
    assert np.allclose(r["context_db"], [[0.0] * 3, [10.0] * 3], atol=0.01)
    assert r["block_db"].shape == (2, 6, 3) and np.isfinite(r["block_db"]).all()
    assert np.array_equal(SCRIPT["return_map"](ckpt, **args)["block_db"], r["block_db"])
    mean, lo, hi = SCRIPT["mean_ci"](np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and 1.0 <= lo < mean < hi <= 4.0
