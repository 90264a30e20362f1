"""Block seams: equal-power crossfade keeps power; streamed decoding has no clicks where naive decoding does."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmdm.audio.codec import MelCodec
from lmdm.audio.decoder import StreamingDecoder, decode_in_blocks
from lmdm.audio.seams import crossfade, equal_power_ramps, seam_click_ratio

SR = 16000


def tone(seconds=6.0, f0=220.0):
    """A harmonic tone with vibrato and a slow swell: a stand-in for a sustained instrument."""
    t = np.arange(int(SR * seconds)) / SR
    x = sum(0.2 / k * np.sin(2 * np.pi * f0 * k * t + 0.5 * np.sin(2 * np.pi * 5 * t)) for k in range(1, 6))
    return (x * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


def test_equal_power_ramps_sum_to_one():
    fo, fi = equal_power_ramps(640)
    assert np.allclose(fo**2 + fi**2, 1.0, atol=1e-6)
    assert fo[0] > 0.99 and fi[-1] > 0.99 and np.all(np.diff(fo) < 0)


def test_crossfade_keeps_power_of_uncorrelated_signals():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3000, 640)).astype(np.float32)  # 3000 trials of a 640-sample seam
    out = np.stack([crossfade(x, y) for x, y in zip(a, b)])
    power = (out**2).mean(axis=0)  # per sample position, averaged over trials
    assert np.all(np.abs(power - 1.0) < 0.15)
    # a linear crossfade would dip to 0.5 in the middle: the test can tell the difference
    lin = np.linspace(1, 0, 640, dtype=np.float32)
    dip = ((a * lin + b * (1 - lin)) ** 2).mean(axis=0)[320]
    assert dip < 0.6


def test_streamed_decode_has_no_clicks_and_exact_length():
    codec = MelCodec()
    z = codec.encode_numpy(tone())
    B = 16
    spb = B * codec.cfg.samples_per_frame
    dec = StreamingDecoder(codec, seed=0)
    out = np.concatenate([dec.push(z[i : i + B]) for i in range(0, z.shape[0], B)] + [dec.flush()])
    assert len(out) == z.shape[0] * codec.cfg.samples_per_frame
    seams = list(range(spb, len(out), spb))
    assert seam_click_ratio(out, seams, SR) < 3.0
    # decoding each block on its own (no overlap, no crossfade) clicks: the detector sees it
    naive = np.concatenate([codec.decode(z[None, i : i + B], generator=torch.Generator().manual_seed(i))[0].numpy()
                            for i in range(0, z.shape[0], B)])
    assert seam_click_ratio(naive, seams, SR) > 20.0


def test_streamed_decode_is_deterministic_for_a_seed():
    codec = MelCodec()
    z = codec.encode_numpy(tone(2.0))
    runs = []
    for _ in range(2):
        dec = StreamingDecoder(codec, seed=3)
        runs.append(np.concatenate([dec.push(z[i : i + 8]) for i in range(0, z.shape[0], 8)] + [dec.flush()]))
    assert np.array_equal(runs[0], runs[1])


def test_crossfade_longer_than_overlap_is_rejected():
    with pytest.raises(ValueError, match="shorter than the overlap"):
        StreamingDecoder(MelCodec(), overlap_mel_frames=2, crossfade_s=0.04)
    with pytest.raises(ValueError, match="shorter than the overlap"):  # the lookahead is held back as well
        StreamingDecoder(MelCodec(), overlap_mel_frames=8, crossfade_s=0.04, lookahead_mel_frames=6)
    with pytest.raises(ValueError, match="first block must be longer than the decoder's latency"):
        StreamingDecoder(MelCodec()).push(torch.zeros(1, MelCodec().channels))


def test_a_streams_first_block_imports_nothing():
    """The decoder builds the filterbank (librosa's import: about 2 s in a fresh process) when it is made, not in
    the first block's decode, where it made a cold ``lmdm generate`` report twice the decoding time of a warm one
    and would make a live stream's first block late. Checked in a fresh interpreter: the first push imports no
    module."""
    code = (
        "import sys, torch\n"
        "from lmdm.audio.codec import MelCodec\n"
        "from lmdm.audio.decoder import StreamingDecoder\n"
        "codec = MelCodec()\n"
        "dec = StreamingDecoder(codec)\n"
        "before = set(sys.modules)\n"
        "dec.push(torch.zeros(16, codec.channels))\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the first push imported {out.strip()}"


def test_a_short_last_block_is_decoded():
    """A stream whose last block is one latent frame (64 ms, shorter than the 104 ms held back) still comes out
    whole: only the first block must outlast the decoder's latency."""
    codec = MelCodec()
    z = codec.encode_numpy(tone(2.2))[:33]  # two blocks of 16 latent frames and one of 1
    out = decode_in_blocks(StreamingDecoder(codec, seed=0), z, 16)
    assert len(out) == 33 * codec.cfg.samples_per_frame and np.isfinite(out).all()


def test_streamed_decode_has_no_spectral_seam_at_block_boundaries():
    """The re-encoded spectrogram of a block-by-block decode jumps no more at block boundaries than elsewhere
    (block seam ratio, ``lmdm.eval.seams``) once each boundary waits for the next block's decode; with the
    crossfade at the boundary itself (lookahead 0) the same tone jumps more than twice as much there."""
    from lmdm.eval.seams import seam_ratios

    codec = MelCodec()
    z = codec.encode_numpy(tone(12.0))
    B = 16

    def block_seam(lookahead):
        dec = StreamingDecoder(codec, seed=0, lookahead_mel_frames=lookahead)
        assert dec.latency_samples == lookahead * codec.cfg.hop + 640
        out = decode_in_blocks(dec, z, B)
        assert len(out) == z.shape[0] * codec.cfg.samples_per_frame
        mel = codec.audio_to_mel(torch.from_numpy(out)[None])[0].numpy()
        return seam_ratios(mel, codec.cfg.patch, B * codec.cfg.patch)["block"]

    assert block_seam(4) <= 1.1
    assert block_seam(0) > 2.0
