"""The learned latent: the patch autoencoder, its training (resumable), the codec and checkpoints that carry it, the
seam lens, and the model/caches on a compact latent."""
import json

import numpy as np
import pytest
import torch

from lmdm.audio.autoencoder import (
    AutoencoderConfig,
    AutoencoderError,
    PatchAutoencoder,
    load_autoencoder,
    save_autoencoder,
)
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lmdm.config import to_dict
from lmdm.eval.seams import seam_ratios
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT


def small_ae(seed: int = 0, latent: int = 16) -> PatchAutoencoder:
    torch.manual_seed(seed)
    return PatchAutoencoder(AutoencoderConfig(latent_channels=latent, hidden=64, depth=1)).eval()


def test_standardisation_gives_zero_mean_unit_rms_and_decode_inverts_it():
    ae = small_ae()
    x = torch.randn(3000, 512)
    raw = ae.raw_encode(x)
    ae.set_latent_stats(x, batch=1000)
    z = ae.encode(x)
    assert z.shape == (3000, 16)
    assert z.mean(0).abs().max() < 1e-4 and abs(z.pow(2).mean().sqrt().item() - 1) < 1e-4
    assert not torch.allclose(z, raw)  # the statistics changed the code ...
    torch.testing.assert_close(ae.decode(z), ae.raw_decode(raw), atol=1e-5, rtol=1e-5)  # ... and decode undoes it
    with pytest.raises(ValueError, match="expects 16"):
        ae.decode(torch.zeros(2, 15))


def test_codec_with_an_autoencoder_encodes_frame_by_frame_and_shows_a_spectrogram():
    ae = small_ae()
    codec = MelCodec(CodecConfig(), ae)
    assert codec.channels == 16 and MelCodec(CodecConfig()).channels == 512
    audio = torch.randn(1, 16000) * 0.1
    z = codec.encode(audio)
    assert z.shape == (1, 16, 16)
    # frame by frame: no context across latent frames, so streaming works (the last frame of the part differs only
    # because its STFT window reaches past the cut)
    torch.testing.assert_close(codec.encode(audio[:, : 8 * 1024])[:, :7], z[:, :7], atol=1e-5, rtol=1e-5)
    mel = codec.latent_to_mel(z)
    assert mel.shape == (1, 64, 128)
    # the decoder looks back, never ahead: a prefix decodes alone as in the whole, and block by block with the
    # previous block's last frame as context gives the whole stream's spectrogram
    torch.testing.assert_close(mel[:, :32], codec.latent_to_mel(z[:, :8]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mel[:, 32:], codec.latent_to_mel(z[:, 8:], previous=z[:, 7:8]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mel[:, 32:], codec.latent_to_mel(z[:, 8:]), atol=1e-3)  # the context matters
    assert codec.decode(z).shape == (1, 16 * 1024)
    with pytest.raises(ValueError, match="the codec expects 16"):
        codec.latent_to_mel(torch.zeros(1, 4, 512))
    with pytest.raises(ValueError, match="patch"):
        MelCodec(CodecConfig(n_mels=64), ae)


def test_checkpoint_carries_its_autoencoder(tmp_path):
    ae = small_ae(1)
    ae.set_latent_stats(torch.randn(500, 512))
    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_channels=16, d_model=32, n_layers=1, n_heads=2))
    save_checkpoint(tmp_path / "ck", model, MelCodec(CodecConfig(), ae))
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.codec.channels == 16 and ck.codec.autoencoder.cfg == ae.cfg
    for k, v in ae.state_dict().items():  # stored in float16 (a bundled checkpoint stays under 40 MB), loaded as float32
        got = ck.codec.autoencoder.state_dict()[k]
        assert got.dtype == torch.float32 and torch.equal(got, v.half().float()), k
    z = torch.randn(1, 3, 16)
    mel, want = ck.codec.latent_to_mel(z), MelCodec(CodecConfig(), ae).latent_to_mel(z)
    assert 0 < (mel - want).abs().max() < 1e-2 * want.std()  # the rounding shows, far below reconstruction error
    # a model for another latent size is refused when saving, and a checkpoint missing its autoencoder on loading
    with pytest.raises(ValueError, match="16"):
        save_checkpoint(tmp_path / "bad", DiT(DiTConfig(latent_channels=512, d_model=32, n_layers=1, n_heads=2)),
                        MelCodec(CodecConfig(), ae))
    (tmp_path / "ck" / "autoencoder.safetensors").unlink()
    with pytest.raises(CheckpointError, match="autoencoder.safetensors is missing"):
        load_checkpoint(tmp_path / "ck")


def test_a_checkpoint_from_the_old_codec_is_refused_with_a_message(tmp_path, capsys):
    """Version 1 checkpoints (before the learned latent) do not say which latent they diffuse: refused, not
    decoded into garbage."""
    from lmdm.cli import main

    model = DiT(DiTConfig(latent_channels=512, d_model=32, n_layers=1, n_heads=2))
    save_checkpoint(tmp_path / "old", model, MelCodec(CodecConfig()))
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["autoencoder"]
    meta["version"] = 1
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="version 1 checkpoint, from before lmdm's learned latent"):
        load_checkpoint(tmp_path / "old")
    assert main(["--quiet", "generate", "solo flute", "--checkpoint", str(tmp_path / "old"), "--seconds", "1",
                 "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "version 1 checkpoint" in err[0] and not (tmp_path / "x.wav").exists()


def test_autoencoder_folder_round_trip_and_errors(tmp_path):
    ae = small_ae(2)
    save_autoencoder(tmp_path / "ae", ae, to_dict(CodecConfig()), {"val_mse": 0.5})
    back, codec, metrics = load_autoencoder(tmp_path / "ae")
    assert back.cfg == ae.cfg and codec == to_dict(CodecConfig()) and metrics == {"val_mse": 0.5}
    with pytest.raises(AutoencoderError, match="lmdm autoencoder train"):
        load_autoencoder(tmp_path / "nothing")
    (tmp_path / "ae" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(AutoencoderError, match="corrupt"):
        load_autoencoder(tmp_path / "ae")


def test_autoencoder_training_learns_and_resumes_exactly(real_data, tmp_path, monkeypatch):
    """60 steps straight vs 30 steps, a checkpoint, and a resume: the same final weights."""
    import shutil

    from lmdm.train import autoencoder as training
    from lmdm.train.autoencoder import AutoencoderRun, train_autoencoder

    monkeypatch.setattr(training, "CKPT_EVERY", 30)
    cfg = AutoencoderConfig(latent_channels=16, hidden=64, depth=1, steps=60, batch_size=64, lr=3e-3)
    full = train_autoencoder(AutoencoderRun(data=str(real_data), autoencoder=cfg, run_dir=str(tmp_path / "a")),
                             progress=False)
    # the data's variance is about 1 in normalised log-mel units; a 16-number code of 512 must do much better
    assert full["val_mse"] < 0.3 and full["step"] == 60
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "ckpt" / "step-000060")
    shutil.rmtree(tmp_path / "b" / "final")
    (tmp_path / "b" / "ckpt" / "latest").write_text("step-000030")
    resumed = train_autoencoder(None, resume=True, progress=False, run_dir=tmp_path / "b")
    a, _, _ = load_autoencoder(full["final_dir"])
    b, _, _ = load_autoencoder(resumed["final_dir"])
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], atol=0, rtol=0, msg=k)
    assert resumed["val_mse"] == full["val_mse"]


def test_seam_ratios_find_a_grid_and_read_one_without_one():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(640, 32)) * 0.1, axis=0)  # a random walk: no grid
    r = seam_ratios(smooth, 4, 64)
    assert abs(r["frame"] - 1) < 0.1 and abs(r["block"] - 1) < 0.15
    stepped = smooth.copy()
    stepped[::4] += rng.normal(size=(160, 32)) * 0.3  # a jump where every latent frame starts
    r = seam_ratios(stepped, 4, 64)
    assert r["frame"] > 1.5
    assert seam_ratios(stepped, 4, 64, offset=2)["frame"] < r["frame"]  # the grid placed elsewhere sees less
    blocky = smooth.copy()
    blocky[::64] += 1.0
    assert seam_ratios(blocky, 4, 64)["block"] > 3
    with pytest.raises(ValueError, match="spectrogram"):
        seam_ratios(np.zeros(10), 4, 64)


def test_cached_equals_uncached_on_a_compact_latent():
    """The cache, masks and streamers see a 16-channel latent like any other: cached == uncached to 1e-4."""
    from lmdm.streaming.streamer import (
        BlockCausalStreamer,
        SamplerConfig,
        UncachedBlockCausalStreamer,
        block_differences,
    )

    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_channels=16, d_model=32, n_layers=2, n_heads=2, block_frames=4,
                          window_chunks=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sc = SamplerConfig(steps=3, sampler="euler", cfg_scale=2.0, seed=5)
    a, b = BlockCausalStreamer(model, sc), UncachedBlockCausalStreamer(model, sc)
    text = torch.randn(1, model.cfg.text_dim)
    for s in (a, b):
        s.set_prompt(text, torch.ones(1, dtype=torch.bool))
    diffs = block_differences(a, b, 6)
    assert max(diffs) < 1e-4, diffs
    assert a.history.shape[-1] == 16


def test_streaming_decoder_gives_the_autoencoder_the_previous_block():
    """Decoded block by block, a learned latent's spectrogram is the one decoded from the whole stream."""
    from lmdm.audio.decoder import StreamingDecoder

    codec = MelCodec(CodecConfig(), small_ae(3))
    z = torch.randn(32, 16)
    dec = StreamingDecoder(codec, seed=0)
    dec.push(z[:16])
    dec.push(z[16:])
    whole = codec.latent_to_mel(z[None])[0]
    torch.testing.assert_close(dec.prev_mel, whole[-dec.overlap :], atol=1e-5, rtol=1e-5)


def test_seam_ratios_of_silence_are_nan():
    r = seam_ratios(np.zeros((128, 8)), 4, 64)
    assert np.isnan(r["frame"]) and np.isnan(r["block"])


def test_an_lmdm_trains_on_the_learned_latent_and_resumes_exactly(real_data, tmp_path):
    """A run on a learned latent copies the autoencoder into the run (retraining the original cannot change a
    resumed run), exports checkpoints that carry it, and resumes from a checkpoint to the same weights."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file

    from lmdm.audio.autoencoder import save_autoencoder
    from lmdm.train.pretrain import TrainError, train
    from tests.conftest import tiny_train_config

    ae = small_ae(4)
    ae.set_latent_stats(torch.randn(400, 512))
    save_autoencoder(tmp_path / "ae", ae, to_dict(CodecConfig()), {})
    base = tiny_train_config(real_data, tmp_path / "straight", steps=30, autoencoder=str(tmp_path / "ae"),
                             t_uniform=0.2)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, latent_channels=16))
    train(base, progress=False)
    assert (tmp_path / "straight" / "autoencoder" / "model.safetensors").is_file()
    ck = load_checkpoint(tmp_path / "straight" / "final")
    assert ck.codec.channels == 16 and torch.equal(ck.codec.autoencoder.latent_mean, ae.latent_mean.half().float())
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    shutil.rmtree(resumed / "ckpt" / "step-000030")
    (resumed / "ckpt" / "latest").write_text("step-000020")
    shutil.rmtree(tmp_path / "ae")  # the run's own copy is what a resume uses
    assert train(dataclasses.replace(base, run_dir=str(resumed)), resume=True, progress=False).step == 30
    for name in ("model", "ema"):
        a = load_file(str(tmp_path / "straight" / "ckpt" / "step-000030" / f"{name}.safetensors"))
        b = load_file(str(resumed / "ckpt" / "step-000030" / f"{name}.safetensors"))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    # a model whose size does not fit the latent is refused before training
    wrong = dataclasses.replace(base, run_dir=str(tmp_path / "wrong"), autoencoder=str(resumed / "autoencoder"),
                                model=dataclasses.replace(base.model, latent_channels=32))
    with pytest.raises(TrainError, match="latent_channels"):
        train(wrong, progress=False)
