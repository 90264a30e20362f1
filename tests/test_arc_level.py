"""Level in ARC-Forcing: the discriminator hears a level change of the decoded spectrogram; the level anchor is
zero for real statistics, grows with a level offset and reaches the latent through a differentiable decoder; the
ceiling is the data's loudest value per band and costs only what rises above it."""
import math

import pytest
import torch

from lmdm.audio.autoencoder import AutoencoderConfig, PatchAutoencoder
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.diffusion import add_noise
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.level import DecodedMel, band_ceiling, band_moments, ceiling_loss, level_anchor_loss


def tiny_student(latent_channels: int) -> DiT:
    """A tiny DiT with random, non-zero weights everywhere (as ``tests/test_arc.py``'s)."""
    torch.manual_seed(0)
    m = DiT(DiTConfig(latent_channels=latent_channels, d_model=32, n_layers=2, n_heads=2, block_frames=4,
                      window_chunks=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("latent", ["raw-mel", "autoencoder"])
def test_the_discriminator_hears_a_level_change(latent):
    """A loud and a quiet version of the same music (the decoded spectrogram shifted by 6 dB) enter the
    discriminator as different inputs and get different scores: nothing normalises level away."""
    torch.manual_seed(0)
    ae = None if latent == "raw-mel" else PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1))
    codec = MelCodec(CodecConfig(), ae)
    student = tiny_student(latent_channels=codec.channels)
    disc = Discriminator(student, n_layers=2, head_width=16)
    assert not any(isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm1d, torch.nn.InstanceNorm1d))
                   for m in disc.modules())
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(2, 16 * 4, 128, generator=g) * 0.5  # (b, mel frames, bands), normalised log-mel
    six_db = 6.0 / (20 * math.log10(math.e) * codec.cfg.std)  # +6 dB in normalised log-mel
    x_quiet, x_loud = (codec.patches_to_latent(codec.mel_to_latent(m)) for m in (mel, mel + six_db))
    assert (x_loud - x_quiet).abs().max() > 1e-2
    t = torch.full((2,), 0.3)
    eps = torch.randn(x_quiet.shape, generator=g)
    text, has = torch.randn(2, 384, generator=g), torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        quiet, loud = (disc(add_noise(x, eps, t), t, text, has, 8) for x in (x_quiet, x_loud))
        # what the test guards against: standardising each crop would score the two the same (raw-mel: the
        # level change is a uniform shift of the latent)
        standardise = lambda x: (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True)
        hidden = [disc(add_noise(standardise(x), eps, t), t, text, has, 8) for x in (x_quiet, x_loud)]
    assert (loud - quiet).abs().min() > 1e-4
    if latent == "raw-mel":
        assert (hidden[1] - hidden[0]).abs().max() < 1e-5


def test_level_anchor_is_zero_for_real_statistics_and_grows_with_a_level_offset():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(3, 40, 128, generator=g) * torch.linspace(0.2, 1.5, 128) + torch.linspace(-1, 1, 128)
    mean, std = band_moments(real)
    flat = real.reshape(-1, 128).double()
    assert torch.allclose(mean.double(), flat.mean(0), atol=1e-5)
    assert torch.allclose(std.double(), flat.std(0, unbiased=False), atol=1e-4)
    shuffled = real.reshape(-1, 128)[torch.randperm(120, generator=g)].reshape(6, 20, 128)
    assert level_anchor_loss(shuffled, real).item() < 1e-10  # the same statistics in another batch layout
    losses = [level_anchor_loss(real + d, real).item() for d in (0.1, 0.3, 0.65)]
    assert losses == pytest.approx([0.01, 0.09, 0.4225], rel=1e-4)  # a uniform offset d costs d^2
    assert level_anchor_loss(real * 1.5, real).item() > 0.01  # a wider spread costs too
    # its gradient pulls a louder fake back towards the real level
    fake = (real + 0.3).requires_grad_(True)
    level_anchor_loss(fake, real).backward()
    assert (fake.grad.sum((0, 1)) > 0).all()
    with pytest.raises(ValueError, match="bands"):
        level_anchor_loss(real, real[..., :64])
    # per item: one louder and one quieter item cancel in the pooled mean but each pays on its own
    louder_quieter = real + torch.tensor([0.3, -0.3, 0.0])[:, None, None]
    pooled, each = level_anchor_loss(louder_quieter, real), level_anchor_loss(louder_quieter, real, per_item=True)
    assert each.item() > 3 * pooled.item() and level_anchor_loss(real, real, per_item=True).item() < 1e-10
    with pytest.raises(ValueError, match="as many real items"):
        level_anchor_loss(real, real[:2], per_item=True)


def test_decoded_mel_is_differentiable_and_matches_the_codec():
    torch.manual_seed(0)
    codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    mel = DecodedMel(codec)
    z = torch.randn(2, 6, 16, requires_grad=True)
    out = mel(z)
    assert out.shape == (2, 24, 128) and torch.allclose(out, codec.latent_to_mel(z.detach()), atol=1e-6)
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in mel.parameters())
    with pytest.raises(ValueError, match="channels"):
        mel(torch.randn(1, 2, 8))


def test_ceiling_costs_only_what_rises_above_the_datas_loudest_value_per_band():
    torch.manual_seed(0)
    codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    mel = DecodedMel(codec)
    works = [torch.randn(37, 16), torch.randn(5, 16) * 3]
    # each work decoded on its own; chunks carry the decoder's look-back, so chunking changes nothing
    whole = torch.maximum(mel(works[0][None]).amax((0, 1)), mel(works[1][None]).amax((0, 1)))
    assert torch.allclose(band_ceiling(mel, works), whole)
    assert torch.allclose(band_ceiling(mel, works, chunk=8), whole, atol=1e-6)
    ceiling = whole
    real = torch.cat([mel(w[None]) for w in works], 1)
    assert ceiling_loss(real, ceiling).item() == 0.0  # the data never exceeds its own ceiling
    fake = real.clone()
    fake[0, :10, 3] = ceiling[3] + 1.0  # 10 frames one unit over in one band
    fake[0, :10, 7] = ceiling[7] + 0.5
    assert ceiling_loss(fake, ceiling).item() == pytest.approx(10 * (1.0 + 0.25) / fake.shape[1], rel=1e-5)
    fake.requires_grad_(True)
    ceiling_loss(fake, ceiling).backward()
    over = torch.zeros_like(fake, dtype=torch.bool)
    over[0, :10, 3] = over[0, :10, 7] = True
    assert (fake.grad[over] > 0).all() and (fake.grad[~over] == 0).all()  # only what rises above is pushed down
    with pytest.raises(ValueError, match="one per band"):
        ceiling_loss(fake, ceiling[:64])
    with pytest.raises(ValueError, match="at least one"):
        band_ceiling(mel, [])
