"""Level in ARC-Forcing: the discriminator hears a level change of the decoded spectrogram; the level anchor is
zero for real statistics, grows with a level offset and reaches the latent through a differentiable decoder; the
ceiling is the data's loudest value per band and costs only what rises above it; the momentary ceiling measures a
0.4 s window's total level in normalised units and costs only the windows above the data's percentile; the peak
ceiling costs only the hops whose decoded waveform crosses it."""
import math

import pytest
import torch

from lmdm.audio.autoencoder import AutoencoderConfig, PatchAutoencoder
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.diffusion import add_noise
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.level import (
    GAIN_UNITS_PER_DB, DecodedMel, LevelCeilings, band_ceiling, band_moments, ceiling_loss, crest_ceiling,
    crest_ceiling_loss, frame_ceiling_loss, frame_crest, frame_level, frame_peaks, level_anchor_loss,
    momentary_ceiling, momentary_ceiling_loss, momentary_level, peak_ceiling_loss, with_gain,
)


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


def test_momentary_level_is_the_windows_total_power_in_normalised_units():
    """A flat frame at ``x`` in every band has the level ``x + ln(n_mels) / (2 std)``; a gain moves every window by
    the same amount as every band; a window's level is that of its frames' mean power."""
    std, n = 2.5, 128
    flat = torch.full((1, 30, n), 0.7)
    assert torch.allclose(momentary_level(flat, std, 25), torch.full((1, 6), 0.7 + math.log(n) / (2 * std)))
    torch.manual_seed(0)
    mel = torch.randn(2, 40, n)
    assert torch.allclose(momentary_level(mel + 0.3, std, 25), momentary_level(mel, std, 25) + 0.3, atol=1e-5)
    frame = torch.logsumexp(2 * std * mel, -1)
    by_hand = torch.log(torch.exp(frame[:, 5:30]).mean(1)) / (2 * std)  # the window starting at frame 5
    assert torch.allclose(momentary_level(mel, std, 25)[:, 5], by_hand, atol=1e-5)
    assert torch.isfinite(momentary_level(mel * 40, std, 25)).all()  # far above any real level: still finite
    with pytest.raises(ValueError, match="window"):
        momentary_level(mel[:, :10], std, 25)


def test_momentary_ceiling_costs_only_the_windows_above_the_datas_percentile():
    torch.manual_seed(0)
    codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    mel = DecodedMel(codec)
    assert mel.momentary_frames == 25 and mel.std == codec.cfg.std  # 0.4 s at 16 kHz, hop 256
    works = [torch.randn(37, 16), torch.randn(20, 16) * 3, torch.randn(3, 16)]  # the last is shorter than a window
    levels = torch.cat([momentary_level(mel(w[None]), mel.std, 25)[0] for w in works[:2]])
    assert momentary_ceiling(mel, works, quantile=1.0) == pytest.approx(levels.max().item(), rel=1e-5)
    top = momentary_ceiling(mel, works)  # the 99.9th percentile: just below the loudest window
    assert levels.quantile(0.9).item() < top <= levels.max().item()
    real = mel(works[0][None])
    loudest = momentary_ceiling(mel, works[:1], quantile=1.0)
    assert momentary_ceiling_loss(real, loudest, mel.std, 25).item() == 0.0  # no window above the loudest
    fake = real.clone()
    fake[0, :4] += 1.0  # four frames far louder: the windows over them rise above
    fake.requires_grad_(True)
    loss = momentary_ceiling_loss(fake, loudest, mel.std, 25)
    assert loss.item() > 0
    loss.backward()
    assert (fake.grad[0, :4] > 0).any() and (fake.grad[0, 29:] == 0).all()  # frames in no window above: no push
    both = LevelCeilings(band=None, momentary=loudest).losses(fake.detach(), mel)[:2]
    assert both[0].item() == 0.0 and both[1].item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="quantile"):
        momentary_ceiling(mel, works, quantile=1.5)
    with pytest.raises(ValueError, match="at least"):
        momentary_ceiling(mel, works[2:])


def test_with_gain_is_a_gain_on_the_audio_in_the_codecs_units():
    """A level kick of +6.02 dB on the raw-mel latent is what doubling the audio does to the codec's log-mel (away
    from the log floor), -6.02 dB what halving does, and quiet bands stay at the floor; through an autoencoder
    it re-encodes the shifted decode; a wrong gain shape is refused."""
    codec = MelCodec(CodecConfig())
    mel = DecodedMel(codec)
    torch.manual_seed(0)
    t = torch.arange(codec.sample_rate * 2) / codec.sample_rate
    audio = 0.2 * torch.sin(2 * math.pi * 440 * t)[None] + 0.05 * torch.randn(1, len(t))
    z = codec.mel_to_latent(codec.audio_to_mel(audio))
    db = 20 * math.log10(2)
    louder = codec.mel_to_latent(codec.audio_to_mel(2 * audio))
    assert torch.allclose(with_gain(z, mel, torch.tensor([db])), louder, atol=1e-4)
    quieter = codec.mel_to_latent(codec.audio_to_mel(0.5 * audio))
    above = quieter > mel.floor + 1e-3  # halving puts nothing here below the floor but what was already there
    assert torch.allclose(with_gain(z, mel, torch.tensor([-db]))[above], quieter[above], atol=1e-4)
    silent = torch.full((1, 4, 512), mel.floor)
    assert torch.equal(with_gain(silent, mel, torch.tensor([-20.0])), silent)
    with pytest.raises(ValueError, match="one gain per item"):
        with_gain(z, mel, torch.tensor([1.0, 2.0]))
    ae_codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    ae_mel = DecodedMel(ae_codec)
    zz = torch.randn(2, 6, 16)
    gains = torch.tensor([3.0, -3.0])
    decoded = ae_mel(zz)
    shifted = (decoded + (gains / (20 * math.log10(math.e)) / ae_mel.std)[:, None, None]).clamp_min(ae_mel.floor)
    shifted = torch.where(decoded <= ae_mel.floor + 1e-4, decoded, shifted)
    assert torch.allclose(with_gain(zz, ae_mel, gains), ae_codec.patches_to_latent(shifted.reshape(2, 6, 512)),
                          atol=1e-5)



def test_bass_kick_shifts_only_the_bands_below_its_frequency():
    """``below_hz`` makes the gain a low shelf: bands centred below it move by the gain (raw-mel latent: exact,
    away from the floor), every other band is untouched; the band centres are the filterbank's (the first band's
    centre above 0 Hz, rising, the last below fmax)."""
    codec = MelCodec(CodecConfig())
    mel = DecodedMel(codec)
    hz = mel.band_hz
    assert hz.shape == (codec.cfg.n_mels,) and 0 < hz[0] < hz[-1] < codec.cfg.fmax and bool((hz.diff() > 0).all())
    torch.manual_seed(0)
    z = torch.randn(2, 4, 512)  # normalised log-mel, mostly above the floor
    db = torch.tensor([12.0, -12.0])
    kicked = mel(with_gain(z, mel, db, below_hz=150.0)) - mel(z)
    low = hz < 150.0
    assert 3 <= int(low.sum()) < 20
    assert torch.equal(kicked[..., ~low], torch.zeros_like(kicked[..., ~low]))
    unit = 12 / (20 * math.log10(math.e)) / mel.std
    above = mel(z)[0][:, low] > mel.floor + 1e-3
    assert torch.allclose(kicked[0][:, low][above], torch.full_like(kicked[0][:, low][above], unit), atol=1e-5)
    assert torch.equal(with_gain(z, mel, db, below_hz=0.0), with_gain(z, mel, db))

def test_frame_crest_is_how_far_a_frame_sticks_out_of_its_window():
    """Steady sound has crest 0 everywhere; one frame 1 unit above flat surroundings scores its level minus the
    window's log-mean power; a gain changes no crest; the window's centre is frame ``frames // 2``."""
    std, n, k = 2.5, 128, 25
    flat = torch.full((1, 60, n), 0.3)
    assert torch.allclose(frame_crest(flat, std, k), torch.zeros(1, 36), atol=1e-5)
    spike = flat.clone()
    spike[0, 30] += 1.0
    crest = frame_crest(spike, std, k)
    # window i is centred on frame i + 12: the spike's own window is i = 18
    lone = 1.0 - math.log((k - 1 + math.exp(2 * std * 1.0)) / k) / (2 * std)
    assert crest[0, 18].item() == pytest.approx(lone, abs=1e-5) and crest[0, 18] == crest.max()
    assert crest[0, 6:31].lt(1e-5).sum() == 24  # every other frame sits below the windows the spike lifts
    torch.manual_seed(0)
    mel = torch.randn(2, 50, n)
    assert torch.allclose(frame_crest(mel + 0.4, std, k), frame_crest(mel, std, k), atol=1e-5)


def test_crest_ceiling_costs_only_frames_that_stick_out_more_than_the_datas():
    torch.manual_seed(0)
    codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    mel = DecodedMel(codec)
    works = [torch.randn(37, 16), torch.randn(20, 16), torch.randn(3, 16)]  # the last is shorter than a window
    crests = torch.cat([frame_crest(mel(w[None]), mel.std, 25)[0] for w in works[:2]])
    assert crest_ceiling(mel, works, quantile=1.0) == pytest.approx(crests.max().item(), rel=1e-5)
    assert crests.quantile(0.9).item() < crest_ceiling(mel, works) <= crests.max().item()
    real = mel(works[0][None])
    top = crest_ceiling(mel, works[:1], quantile=1.0)
    assert crest_ceiling_loss(real, top, mel.std, 25).item() == 0.0
    fake = real.clone()
    fake[0, 60] += 2.0  # one frame far above its surroundings
    fake.requires_grad_(True)
    loss = crest_ceiling_loss(fake, top, mel.std, 25)
    assert loss.item() > 0
    loss.backward()
    assert fake.grad[0, 60].sum() > 0 and (fake.grad[0, :30] == 0).all()  # far from the spike: no push
    three = LevelCeilings(crest=top).losses(fake.detach(), mel)
    assert three[0].item() == three[1].item() == 0.0 and three[2].item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="quantile"):
        crest_ceiling(mel, works, quantile=-0.1)
    with pytest.raises(ValueError, match="at least"):
        crest_ceiling(mel, works[2:])


def test_frame_ceiling_costs_only_frames_louder_than_the_datas_quantile():
    """One 16 ms frame lifted above the loudest real frame costs and gets gradient, its neighbours none (unlike
    the 0.4 s momentary ceiling, which spreads the push over the window); real music at its own loudest frame
    costs nothing; ``LevelCeilings.losses`` puts it fourth."""
    torch.manual_seed(0)
    codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    mel = DecodedMel(codec)
    real = mel(torch.randn(1, 37, 16))
    top = frame_level(real, mel.std, 1).max().item()
    assert frame_ceiling_loss(real, top, mel.std).item() == 0.0
    fake = real.clone()
    fake[0, 60] += 1.0  # one frame 21.7 dB louder in every band
    fake.requires_grad_(True)
    loss = frame_ceiling_loss(fake, top, mel.std)
    excess = frame_level(fake.detach(), mel.std, 1)[0, 60].item() - top
    assert loss.item() == pytest.approx(excess ** 2 / fake.shape[1], rel=1e-4)  # the one frame above, averaged
    loss.backward()
    assert fake.grad[0, 60].sum() > 0 and (fake.grad[0, :60] == 0).all() and (fake.grad[0, 61:] == 0).all()
    four = LevelCeilings(frame=top).losses(fake.detach(), mel)
    assert [t.item() for t in four[:3]] == [0.0] * 3 and four[3].item() == pytest.approx(loss.item())


def sine_mel(codec: MelCodec, amplitude: float, seconds: float = 2.0, hz: float = 440.0) -> torch.Tensor:
    """The codec's normalised log-mel ``(1, mel_frames, n_mels)`` of a sine of ``amplitude`` (full scale 1)."""
    t = torch.arange(int(seconds * codec.sample_rate)) / codec.sample_rate
    return codec.audio_to_mel((amplitude * torch.sin(2 * math.pi * hz * t))[None])


def test_frame_peaks_are_the_decoded_waveforms_peaks_and_scale_with_gain():
    """A 440 Hz sine at half of full scale decodes (mel -> magnitude -> Griffin-Lim) to hops whose peaks are
    within 10% of 0.5 (the mel's pseudo-inverse blurs the magnitude); 6 dB more on the mel doubles every peak."""
    codec = MelCodec(CodecConfig())
    mel = DecodedMel(codec)
    m = sine_mel(codec, 0.5)
    peaks = frame_peaks(m, mel)
    assert peaks.shape == m.shape[:2]
    assert 0.45 < peaks[0, 8:-8].min().item() and peaks[0, 8:-8].max().item() < 0.55
    louder = frame_peaks(m + 6 * GAIN_UNITS_PER_DB / mel.std, mel)
    assert torch.allclose(louder / peaks, torch.full_like(peaks, 10 ** (6 / 20)), rtol=1e-2)


def test_peak_ceiling_costs_only_the_hops_whose_waveform_crosses_it():
    """Below the ceiling nothing costs; a stretch lifted 12 dB over a quiet sine crosses -1 dBFS, costs the
    squared excess in the codec's log units (``ln(peak / ceiling) / std``) averaged over frames, and only it and
    its STFT window's reach get gradient; ``LevelCeilings.losses`` puts the term fifth."""
    codec = MelCodec(CodecConfig())
    mel = DecodedMel(codec)
    ceiling = 10 ** (-1 / 20)
    quiet = sine_mel(codec, 0.3)
    assert peak_ceiling_loss(quiet, mel, ceiling).item() == 0.0
    fake = quiet.clone()
    fake[0, 60:70] += 12 * GAIN_UNITS_PER_DB / mel.std
    fake.requires_grad_(True)
    loss = peak_ceiling_loss(fake, mel, ceiling)
    peaks = frame_peaks(fake.detach(), mel)[0]
    assert (peaks[60:70] > ceiling).all() and (peaks[:50] < ceiling).all() and (peaks[80:] < ceiling).all()
    expected = (torch.relu(peaks.log() - math.log(ceiling)) / mel.std).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4) and loss.item() > 0
    loss.backward()
    reach = codec.cfg.n_fft // codec.cfg.hop  # a hop's samples depend on the frames whose windows cover it
    assert fake.grad[0, 60:70].abs().sum() > 0
    assert (fake.grad[0, : 60 - reach] == 0).all() and (fake.grad[0, 70 + reach :] == 0).all()
    five = LevelCeilings(peak=ceiling).losses(fake.detach(), mel)
    assert [t.item() for t in five[:4]] == [0.0] * 4 and five[4].item() == pytest.approx(loss.item())
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="full scale"):
            peak_ceiling_loss(quiet, mel, bad)


def test_one_decode_serves_every_summary_of_the_training_split():
    """``decoded_summaries`` decodes each chunk once for all of ARC's start-up ceilings and the guard's, and gives
    what each summary gives on its own (the band maxima, the windowed statistics, in order)."""
    from lmdm.train.arc.level import decoded_summaries, frame_crests, frame_level, momentary_levels, windowed

    torch.manual_seed(0)
    codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    mel = DecodedMel(codec)
    works = [torch.randn(37, 16), torch.randn(30, 16) * 3]
    calls = []
    mel.register_forward_hook(lambda *_: calls.append(1))
    found = decoded_summaries(mel, works, {"band": None, "momentary": momentary_level, "crest": frame_crest,
                                           "frame": frame_level}, chunk=16)
    assert len(calls) == 5  # 3 + 2 chunks of 16 latent frames, each decoded once
    calls.clear()
    assert torch.equal(found["band"], band_ceiling(mel, works, chunk=16))
    assert (found["momentary"] == momentary_levels(mel, works, chunk=16)).all()
    assert (found["crest"] == frame_crests(mel, works, chunk=16)).all()
    assert (found["frame"] == windowed(lambda m, std, _: momentary_level(m, std, 1), mel, works, chunk=16)).all()
    assert len(calls) == 4 * 5  # one decode per summary on its own
    with pytest.raises(ValueError, match="at least one latent frame"):
        decoded_summaries(mel, [], {"band": None})
    with pytest.raises(ValueError, match="momentary_level needs a work"):
        decoded_summaries(mel, [torch.randn(1, 16)], {"band": None, "m": momentary_level})
