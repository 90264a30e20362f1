"""Offline prompt embeddings, and checkpoints: atomic save, exact round trip, clear errors."""
import json
import os

import numpy as np
import pytest
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.text import MAX_PROMPT_CHARS, cache_dir, encode_prompts


def test_prompts_embed_offline_and_empty_means_unconditional():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    emb, has = encode_prompts(["a slow Bach chorale on church organ", "", "a lively fiddle tune on violin"])
    assert emb.shape == (3, 384) and has.tolist() == [True, False, True]
    assert torch.allclose(emb[[0, 2]].norm(dim=1), torch.ones(2), atol=1e-4)
    assert emb[1].abs().sum() == 0
    # similar prompts are closer than different ones
    a, _ = encode_prompts(["Bach chorale on church organ"])
    assert (emb[0] @ a[0]) > (emb[2] @ a[0])
    # the embedding was cached on disk, in the folder the tests set
    assert any((cache_dir() / "prompts").glob("*.npy"))


def test_long_prompt_truncated_with_warning():
    with pytest.warns(UserWarning, match="truncated"):
        emb, has = encode_prompts("x" * 10_000)
    assert has.item() and MAX_PROMPT_CHARS == 1000


def tiny():
    torch.manual_seed(0)
    m = DiT(DiTConfig(latent_channels=512, d_model=32, n_layers=1, n_heads=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m


def test_checkpoint_round_trip(tmp_path):
    m = tiny()
    save_checkpoint(tmp_path / "ck", m, MelCodec(CodecConfig()), {"step": 5}, dtype=torch.float32)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.info["step"] == 5 and ck.model.cfg == m.cfg and ck.codec.cfg == CodecConfig() and ck.codec.autoencoder is None
    for k, v in m.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k])
    assert not ck.model.training
    # overwriting keeps a complete checkpoint and leaves no temporary folders behind
    save_checkpoint(tmp_path / "ck", m, MelCodec(CodecConfig()), {"step": 6})
    assert load_checkpoint(tmp_path / "ck").info["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    save_checkpoint(tmp_path / "ck", tiny(), MelCodec(CodecConfig()))
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck", tiny(), MelCodec(CodecConfig()))
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["model"]["d_model"] = 64
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(tmp_path / "ck")
    meta["format"] = "pickle"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not an lmdm checkpoint"):
        load_checkpoint(tmp_path / "ck")


def test_integer_stereo_pcm_is_scaled_before_the_downmix():
    from lmdm.audio.io import to_mono_float

    pcm = np.stack([np.full(100, 16384, np.int16), np.full(100, -16384, np.int16) // 2], 1)
    out = to_mono_float(pcm, 16000, 16000)
    assert out.dtype == np.float32 and np.allclose(out, (16384 - 8192) / 2 / 32767, atol=1e-6)


def test_fresh_prompt_cache_hides_both_caches_and_puts_them_back(monkeypatch, tmp_path):
    """The prompt-change latency of lmdm bench encodes prompts as never seen; the user's caches are untouched."""
    import numpy as np

    import lmdm.text as text

    monkeypatch.setenv("LMDM_CACHE", str(tmp_path))
    monkeypatch.setattr(text, "_MEMORY", {"seen": np.zeros(text.EMBED_DIM, np.float32)})
    with text.fresh_prompt_cache():
        inner = text.cache_dir()
        assert text._MEMORY == {} and inner != tmp_path and inner.is_dir() and not any(inner.iterdir())
    assert set(text._MEMORY) == {"seen"} and text.cache_dir() == tmp_path and not inner.exists()
