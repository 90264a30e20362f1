"""Drone contexts and the loop-gain term (``lmdm.train.arc.drone``): the bass level reads a doubled low tone as
+6 dB and ignores a high one; a drone raises the bands of its note and harmonics to the asked level in every frame
and leaves the others; the loop-gain term is zero while the written bass stays at or below the context's plus the
margin, the squared excess above it, and its gradient reaches the written blocks only."""
import math

import pytest
import torch

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.train.arc.drone import HARMONICS, band_level, loop_gain_loss, with_drone
from lmdm.train.arc.level import GAIN_UNITS_PER_DB, DecodedMel

CODEC = MelCodec(CodecConfig())
MEL = DecodedMel(CODEC)  # the raw-mel latent: decode and encode are exact reshapes
DB = 20 * math.log10(math.e) * MEL.std  # dB per normalised unit


def tone(hz: float, amplitude: float, seconds: float = 2.0) -> torch.Tensor:
    t = torch.arange(int(CODEC.sample_rate * seconds)) / CODEC.sample_rate
    return amplitude * torch.sin(2 * math.pi * hz * t)[None]


def test_band_level_reads_the_bass_in_db_and_ignores_the_treble():
    low, high = tone(60.0, 0.1), tone(2000.0, 0.3)
    level = lambda audio: float(band_level(MEL(CODEC.mel_to_latent(CODEC.audio_to_mel(audio))), MEL, 150.0)[0]) * DB
    assert level(2 * low + high) - level(low + high) == pytest.approx(20 * math.log10(2), abs=0.05)
    assert level(low + high) == pytest.approx(level(low), abs=0.05)
    with pytest.raises(ValueError, match="no mel band is centred below"):
        band_level(torch.zeros(1, 8, CODEC.cfg.n_mels), MEL, 1.0)


def test_a_drone_raises_its_notes_bands_to_the_asked_level_in_every_frame():
    torch.manual_seed(0)
    z = CODEC.mel_to_latent(CODEC.audio_to_mel(tone(440.0, 0.2) + 0.01 * torch.randn(1, CODEC.sample_rate * 2)))
    z = torch.cat([z, z])
    hz, db = torch.tensor([60.0, 100.0]), torch.tensor([-12.0, 0.0])
    before, after = MEL(z), MEL(with_drone(z, MEL, hz, db))
    ref = band_level(before, MEL, float("inf"))  # the context's total level
    touched = torch.zeros(2, CODEC.cfg.n_mels, dtype=torch.bool)
    for i in range(2):
        for multiple, offset in HARMONICS:
            band = int((MEL.band_hz - multiple * hz[i]).abs().argmin())
            touched[i, band] = True
            want = float(ref[i]) + (float(db[i]) + offset) * GAIN_UNITS_PER_DB / MEL.std
            assert torch.allclose(after[i, :, band], torch.clamp_min(before[i, :, band], want), atol=1e-5)
        assert torch.equal(after[i][:, ~touched[i]], before[i][:, ~touched[i]])
    # the bass now reads about the drone's level re. the total (the note dominates the quiet bass bands), and the
    # whole context at 0 dB about 3 dB louder (the note as loud as everything else)
    bass = (band_level(after, MEL, 150.0) - ref) * DB
    assert bool((bass > db - 1).all()) and bool((bass < db + 3).all())
    total = (band_level(after, MEL, float("inf")) - ref) * DB
    assert 2.0 < float(total[1]) < 4.5 and 0 < float(total[0]) < 1.0
    with pytest.raises(ValueError, match="one value per item"):
        with_drone(z, MEL, torch.tensor([60.0]), db)


def test_the_loop_gain_term_costs_only_a_bass_that_grows_past_the_margin():
    torch.manual_seed(0)
    context = torch.randn(3, 16, CODEC.cfg.n_mels)
    unit = GAIN_UNITS_PER_DB / MEL.std
    bass = (MEL.band_hz < 150.0).float()
    for rise_db in (-6.0, 0.0):
        assert float(loop_gain_loss(context + rise_db * unit * bass, context, MEL)) == pytest.approx(0.0, abs=1e-10)
    written = (context + 6.0 * unit * bass).requires_grad_(True)
    loss = loop_gain_loss(written, context, MEL, margin_db=2.0)
    assert loss.item() == pytest.approx((4.0 * unit) ** 2, rel=1e-4)
    assert float(loop_gain_loss(context + 6.0 * unit * bass, context, MEL, margin_db=6.5)) == 0.0
    ctx = context.clone().requires_grad_(True)
    loss = loop_gain_loss(written, ctx, MEL)
    loss.backward()
    assert ctx.grad is None and written.grad[..., bass.bool()].abs().sum() > 0
    assert torch.equal(written.grad[..., ~bass.bool()], torch.zeros_like(written.grad[..., ~bass.bool()]))


def test_a_rising_drone_reaches_its_level_at_the_last_frame_and_is_quieter_a_block_before():
    """With ``rise_db`` the note's bands hold ``db`` at the context's last frame and ``rise_db`` dB less a block
    earlier (on bands quieter than the note), a steady drone where ``rise_db`` is 0; wrong shapes are refused."""
    z = torch.full((2, 8, 512), MEL.floor)  # silence: every raised value is the note's own
    z[:, :, :128] = 0.0  # one loud band row so the total level is defined away from the floor
    hz, db, rise = torch.tensor([80.0, 80.0]), torch.tensor([0.0, 0.0]), torch.tensor([6.0, 0.0])
    out = MEL(with_drone(z, MEL, hz, db, rise, block_frames=4))  # 8 latent frames = 2 blocks = 32 mel frames
    band = int((MEL.band_hz - 80.0).abs().argmin())
    unit = GAIN_UNITS_PER_DB / MEL.std
    frames_a_block = 4 * MEL.patch
    rising, steady = out[0, :, band], out[1, :, band]
    assert float(rising[-1]) == pytest.approx(float(steady[-1]), abs=1e-5)
    assert float(rising[-1 - frames_a_block] - rising[-1]) == pytest.approx(-6.0 * unit, abs=1e-4)
    assert torch.allclose(steady, steady[-1].expand_as(steady), atol=1e-6)
    with pytest.raises(ValueError, match="one value per item"):
        with_drone(z, MEL, hz, db, torch.tensor([1.0]))
