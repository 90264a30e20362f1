"""Counted FLOPs (torch FlopCounterMode) equal the analytic cost model within 5% on small configs."""
import pytest
import torch

from lmdm.bench.lmm import LMM, LMMConfig, LMMStreamer, ResidualQuantizer, count_params, matched_config
from lmdm.bench.cost import count_flops, dit_block_flops, lmm_block_flops
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.streaming.streamer import SamplerConfig, make_streamer

CFG = DiTConfig(latent_channels=24, d_model=32, n_layers=2, n_heads=2, text_dim=8, control_dim=3,
                block_frames=4, window_chunks=3)


@pytest.mark.parametrize("mask", ["outpainting", "enc_dec", "block_causal"])
@pytest.mark.parametrize("guided", [True, False])
def test_dit_streamer_flops_match_the_formula(mask, guided):
    torch.manual_seed(0)
    model = DiT(CFG).eval().requires_grad_(False)
    steps = 3
    s = make_streamer(model, mask, SamplerConfig(steps=steps, cfg_scale=2.0 if guided else 1.0))
    s.set_prompt(torch.randn(1, 8), torch.ones(1, dtype=torch.bool))
    s.reset()
    for _ in range(CFG.window_chunks + 1):  # fill the window: the next block is steady state
        s.next_block()
    counted = count_flops(s.next_block)
    analytic = dit_block_flops(CFG, mask, steps, guided)
    assert abs(counted - analytic) / analytic < 0.05, (counted, analytic)


def test_lmm_flops_match_the_formula():
    cfg = LMMConfig(d_model=32, n_heads=2, encoder_layers=2, decoder_layers=2, codebook_size=16, depth=3,
                    context_depth=2, block_frames=4, context_frames=8, latent_channels=24, text_dim=8)
    model = LMM(cfg).eval().requires_grad_(False)
    s = LMMStreamer(model, ResidualQuantizer.sampled(cfg.depth, cfg.codebook_size, cfg.latent_channels))
    s.text = torch.zeros(1, 8)
    s.reset(torch.randn(1, 8, 24))
    counted = count_flops(s.next_block)
    analytic = lmm_block_flops(cfg)
    assert abs(counted - analytic) / analytic < 0.05, (counted, analytic)


def test_outpainting_costs_more_than_block_causal_and_the_ratio_grows_with_context():
    ratio = lambda C: dit_block_flops(DiTConfig(window_chunks=C // 16), "outpainting", 8) / dit_block_flops(
        DiTConfig(window_chunks=C // 16), "block_causal", 8)
    assert 1 < ratio(32) < ratio(64) < ratio(128)


def test_matched_lmm_has_about_the_dit_parameter_count():
    dit = DiT(DiTConfig()).num_params()
    cfg = matched_config(dit)
    assert abs(count_params(cfg) - dit) / dit < 0.1
    assert LMM(cfg).num_params() == count_params(cfg)
