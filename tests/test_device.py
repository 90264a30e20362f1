"""Tensors follow the model's device: with torch's default device set to ``meta``, anything the library creates
without naming a device lands on ``meta`` and the first operation mixing it with the CPU model raises. So every
test below runs a CPU model under ``torch.set_default_device("meta")`` and fails if a mask, layout, cache, streamer
or sampler tensor is created on the default device instead of the model's."""
import contextlib

import pytest
import torch

from lmdm.device import autocast, autocast_dtype, module_device, resolve_device
from lmdm.errors import UsageError
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT


@contextlib.contextmanager
def default_device_meta():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def tiny_model() -> DiT:
    torch.manual_seed(0)
    m = DiT(DiTConfig(d_model=32, n_layers=2, n_heads=2, block_frames=4, window_chunks=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_the_meta_default_catches_a_tensor_created_without_a_device():
    cpu = torch.ones(2)
    with default_device_meta(), pytest.raises(RuntimeError, match="device"):
        cpu + torch.ones(2)


def test_resolve_device_names_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(UsageError, match="cuda is not available"):
            resolve_device("cuda")
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("cpu:1")


def test_autocast_dtype_per_device():
    assert autocast_dtype("cpu") == torch.bfloat16
    assert autocast_dtype("mps") is None
    with autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")
    with autocast("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cuda_autocast_asks_the_given_gpu_for_native_bf16(monkeypatch, native):
    asked = []

    @contextlib.contextmanager
    def on(device):
        asked.append(torch.device(device))
        yield

    def supported(including_emulation=True):  # an emulating GPU (V100, T4) says True unless asked for native
        asked.append(including_emulation)
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", on)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert autocast_dtype("cuda:1") == (torch.bfloat16 if native else None)
    assert asked == [torch.device("cuda:1"), False]


@pytest.mark.parametrize("mask", ["block_causal", "enc_dec", "outpainting"])
def test_streamers_keep_every_tensor_on_the_models_device(mask):
    from lmdm.streaming.streamer import SamplerConfig, UncachedBlockCausalStreamer, make_streamer

    m = tiny_model()
    sampler = SamplerConfig(steps=2, cfg_scale=2.0)
    controls = torch.zeros(1, 4, m.cfg.control_dim)
    with default_device_meta():
        s = make_streamer(m, mask, sampler)
        s.set_prompt(torch.ones(1, 384, device="cpu"), torch.ones(1, dtype=torch.bool, device="cpu"))
        s.reset(torch.randn(1, 8, m.cfg.latent_channels, device="cpu"))
        blocks = [s.next_block(controls) for _ in range(4)]
        if mask == "block_causal":  # the cached stream equals the uncached reference, also here
            ref = UncachedBlockCausalStreamer(m, sampler)
            ref.set_prompt(torch.ones(1, 384, device="cpu"), torch.ones(1, dtype=torch.bool, device="cpu"))
            ref.reset(torch.randn(1, 8, m.cfg.latent_channels, device="cpu").zero_() + s.history[:, :8])
            for blk in blocks:
                assert torch.allclose(ref.next_block(controls), blk, atol=1e-4)
    assert all(b.device.type == "cpu" and torch.isfinite(b).all() for b in blocks)
    assert s.history.device.type == "cpu" and s.context().device.type == "cpu"


def test_training_layouts_rollout_and_discriminator_follow_the_model():
    from lmdm.diffusion import add_noise
    from lmdm.model.layouts import enc_dec_tokens, outpainting_tokens, teacher_forcing_tokens
    from lmdm.train.arc.discriminator import Discriminator
    from lmdm.train.arc.rollout import rollout

    m = tiny_model().train().requires_grad_(True)
    ch, B = m.cfg.latent_channels, m.cfg.block_frames
    g = torch.Generator("cpu").manual_seed(0)
    x0 = torch.randn(2, 4 * B, ch, generator=g)
    text, has = torch.randn(2, 384, generator=g), torch.tensor([True, False])
    t = torch.rand(2, 4, generator=g)
    disc = Discriminator(m, n_layers=1, head_width=8)  # modules are built before: their weights are the model's
    with default_device_meta():
        x_t = add_noise(x0, torch.randn(x0.shape, generator=g, device="cpu"), t.repeat_interleave(B, 1))
        drop = torch.tensor([False, True], device="cpu")
        toks = [teacher_forcing_tokens(x0, x_t, t, 2, None, drop),
                enc_dec_tokens(x0[:, :8], x_t[:, 8:12], t[:, 0]),
                outpainting_tokens(x0[:, :8], x_t[:, :8], x_t[:, 8:12], t[:, 0])]
        loss = sum(m(tok, text, has).square().mean() for tok in toks)
        ro = rollout(m, x0[:, :8], text, has, exit_steps=[2, 1], steps=2, generator=g)
        score = disc(torch.cat([x0[:, :8], ro.blocks], 1), t[:, 0], text, has, 8)
        (loss + score.sum() + ro.blocks.square().mean()).backward()
    assert module_device(m).type == "cpu" and m.out_proj.weight.grad is not None
    assert score.shape == (2,) and torch.isfinite(score).all()


def test_the_bench_lmm_streams_on_its_models_device():
    from lmdm.bench.lmm import LMM, LMMConfig, LMMStreamer, ResidualQuantizer

    cfg = LMMConfig(d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1, codebook_size=16, depth=3,
                    context_depth=2, block_frames=4, context_frames=8, latent_channels=24, text_dim=8)
    lmm = LMM(cfg).eval().requires_grad_(False)
    rvq = ResidualQuantizer.sampled(cfg.depth, cfg.codebook_size, cfg.latent_channels)
    context = torch.randn(1, 8, 24)
    with default_device_meta():
        s = LMMStreamer(lmm, rvq)
        s.text = torch.ones(1, 8, device="cpu")
        blocks = [s.next_block() for _ in range(3)]
        s.reset(context)
        blocks.append(s.next_block())
    assert all(b.device.type == "cpu" and b.shape == (1, 4, 24) for b in blocks)
    assert s.tokens.device.type == "cpu" and s.tokens.shape == (1, 8 + 4, 3)


@pytest.mark.parametrize("mode", ["block_causal", "enc_dec", "outpainting"])
def test_the_training_batch_sample_draw_and_loss_follow_the_model(mode):
    from lmdm.train.config import TrainConfig
    from lmdm.train.dataset import LatentSet
    from lmdm.train.objective import draw_batch, loss_on_rows

    m = tiny_model().train().requires_grad_(True)
    ch = m.cfg.latent_channels
    cfg = TrainConfig(model=m.cfg, train_chunks=4, batch_size=4, t_uniform=0.2, bf16=False)
    frames = torch.tensor([40, 30])
    data = LatentSet(latents=torch.randn(70, ch).half(), features=torch.rand(70, 4).half(),
                     frame_work=torch.repeat_interleave(torch.arange(2, dtype=torch.int32), frames),
                     work_start=torch.tensor([0, 40]), work_frames=frames, captions=torch.randn(3, 384),
                     caption_start=torch.tensor([0, 1]), caption_count=torch.tensor([1, 2]), work_ids=["a", "b"],
                     splits=["train", "train"], texts=["x", "y", "z"])
    g = torch.Generator("cpu").manual_seed(0)
    with default_device_meta():
        starts = data.valid_starts("train", cfg.crop_frames)
        x0, feats, text = data.sample(starts, 4, cfg.crop_frames, g, rows=slice(2, 4))
        draw = draw_batch(mode, 4, cfg.crop_frames, ch, cfg, g)
        loss = loss_on_rows(m, draw.rows(slice(2, 4)), x0, feats, text, cfg)
        loss.backward()
    assert loss.device.type == "cpu" and torch.isfinite(loss) and m.out_proj.weight.grad is not None
