"""The level guard (``lmdm.streaming.level_guard``) and the streamer's ``block_filter`` hook it plugs into."""
from __future__ import annotations

import math

import pytest
import torch

from lmdm.audio.autoencoder import AutoencoderConfig, PatchAutoencoder
from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.streaming.level_guard import LevelGuard, guard_gain
from lmdm.train.arc.level import DecodedMel, momentary_level
from tests.test_cache import TOL, tiny_model


def _latent(codec: MelCodec, seconds: float, amplitude: float, seed: int) -> torch.Tensor:
    """``(1, frames, ch)`` raw-mel latent of a tone plus noise, well above the codec's log floor."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(codec.sample_rate * seconds)) / codec.sample_rate
    audio = amplitude * (torch.sin(2 * math.pi * 330 * t) + 0.3 * torch.randn(len(t), generator=g))
    z = codec.mel_to_latent(codec.audio_to_mel(audio[None]))
    return z[:, : z.shape[1] // 16 * 16]


def _block_peak(mel: DecodedMel, ctx: torch.Tensor, block: torch.Tensor) -> float:
    decoded = mel(torch.cat([ctx, block], 1))[:, ctx.shape[1] * mel.patch:]
    return float(momentary_level(decoded, mel.std, mel.momentary_frames).max())


def test_a_block_above_the_ceiling_is_turned_down_to_it_and_one_below_passes_bit_for_bit():
    """Raw-mel codec (its gain is exact): a loud block after quiet context comes back with its loudest in-block
    0.4 s window at the ceiling, by a negative gain in dB; the quiet context's block passes as the same tensor."""
    codec = MelCodec(CodecConfig())
    mel = DecodedMel(codec)
    ctx, loud = _latent(codec, 2.2, 0.02, 0), _latent(codec, 1.1, 0.5, 1)[:, :16]
    quiet_block = ctx[:, -16:]
    ceiling = _block_peak(mel, ctx[:, :-16], quiet_block) + 0.05
    before = _block_peak(mel, ctx, loud)
    assert before > ceiling + 0.5  # the loud block is ~28 dB louder: far above
    guard = LevelGuard(mel, ceiling)
    out = guard(loud, ctx)
    assert abs(_block_peak(mel, ctx, out) - ceiling) < 0.01
    db = guard.cuts_db[-1][0]
    assert db < 0 and abs(db + (before - ceiling) * mel.std * 20 * math.log10(math.e)) < 1e-3
    assert guard(quiet_block, ctx[:, :-16]) is quiet_block and guard.cuts_db[-1] == [0.0]


def test_the_guard_acts_per_item_and_reads_the_decoders_look_back_through_an_autoencoder():
    """Two streams in one batch: only the loud one changes; through an autoencoder the block is decoded with the
    context frame its decoder looks back at (the gain is the hand-computed one of the block decoded after its
    context), and frames before that look-back change nothing."""
    codec = MelCodec(CodecConfig(), PatchAutoencoder(AutoencoderConfig(latent_channels=16, hidden=64, depth=1)))
    mel = DecodedMel(codec)
    torch.manual_seed(0)
    ctx, block = torch.randn(2, 8, 16), torch.randn(2, 16, 16)
    levels = [_block_peak(mel, ctx[i : i + 1], block[i : i + 1]) for i in range(2)]
    ceiling = (levels[0] + levels[1]) / 2
    loud = 0 if levels[0] > levels[1] else 1
    out = LevelGuard(mel, ceiling)(block, ctx)
    assert torch.equal(out[1 - loud], block[1 - loud]) and not torch.allclose(out[loud], block[loud])
    # by hand: every in-block window of the block decoded after the whole context, its excess in dB
    decoded = mel(torch.cat([ctx, block], 1))[:, 8 * mel.patch:]
    excess = (momentary_level(decoded, mel.std, mel.momentary_frames).amax(1) - ceiling).clamp_min(0)
    assert torch.allclose(guard_gain(block, ctx, mel, ceiling), -excess * mel.std * 20 * math.log10(math.e))
    other = ctx.clone()
    other[:, :-1] += 3.0  # frames the block's decode does not see
    assert torch.equal(guard_gain(block, ctx, mel, ceiling), guard_gain(block, other, mel, ceiling))


def test_a_block_filter_reaches_the_cache_and_never_an_exit_step_block():
    """The filtered block is what the stream keeps and caches: the cached streamer still equals the uncached
    reference (which re-reads the kept history), and both differ from an unfiltered stream; a rollout's
    ``exit_step`` block is not filtered."""
    from lmdm.streaming.streamer import (
        BlockCausalStreamer,
        SamplerConfig,
        UncachedBlockCausalStreamer,
        block_differences,
    )

    model = tiny_model(2)
    sc = SamplerConfig(steps=3, sampler="pingpong", cfg_scale=1.0, seed=5)
    calls = []

    def halve(block, context):
        calls.append(context.shape[1])
        return 0.5 * block

    a, b, plain = BlockCausalStreamer(model, sc), UncachedBlockCausalStreamer(model, sc), BlockCausalStreamer(model, sc)
    a.block_filter = b.block_filter = halve
    assert max(block_differences(a, b, 5)) < TOL
    # each block (a's and b's in turn) sees the context the stream had: the window is 2 blocks of 4 frames
    assert calls == [0, 0, 4, 4, 8, 8, 8, 8, 8, 8]
    plain.reset()
    plain_blocks = [plain.next_block() for _ in range(5)]
    assert torch.allclose(a.history[:, :4], 0.5 * plain_blocks[0], atol=TOL)  # the first block: same noise, halved
    assert (a.history[:, 4:] - torch.cat(plain_blocks[1:], 1)).abs().max() > 1e-3  # later: a halved context
    calls.clear()
    a.reset()
    a.next_block(exit_step=2)
    assert calls == []


def test_a_study_system_checks_its_guard_and_keeps_old_stream_keys():
    from lmdm.config import ConfigError
    from lmdm.metrics.drift_study import StudyConfig, StudySystem, stream_settings

    for bad in (0.0, 1.5, True):
        with pytest.raises(ConfigError, match="level_guard must be a quantile"):
            StudySystem("g", "data/checkpoints/lmdm-small-arc", level_guard=bad)
    plain = StudySystem("a", "data/checkpoints/lmdm-small-arc")
    guarded = StudySystem("a", "data/checkpoints/lmdm-small-arc", level_guard=1.0)
    cfg = StudyConfig(systems=(plain,))
    assert "level_guard" not in stream_settings(cfg, plain, "p", 0)["system"]
    assert stream_settings(cfg, guarded, "p", 0)["system"]["level_guard"] == 1.0
