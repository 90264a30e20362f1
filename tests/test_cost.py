"""The cost model: FLOPs counted by running the streamers (torch FlopCounterMode) equal hand-derived known answers
for a tiny config, and equal the analytic formulas of ``lmdm.bench.cost`` exactly on small configs."""
import dataclasses

import pytest
import torch

from lmdm.bench.cost import count_flops, count_passes, dit_block_flops, first_layers, lmm_block_flops, sequential_passes
from lmdm.bench.lmm import LMM, LMMConfig, LMMStreamer, ResidualQuantizer, count_params, matched_config
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.streaming.streamer import SamplerConfig, make_streamer

CFG = DiTConfig(latent_channels=24, d_model=32, n_layers=2, n_heads=2, text_dim=8, control_dim=3,
                block_frames=4, window_chunks=3)


def steady_block_flops(cfg: DiTConfig, mask: str, steps: int, guided: bool) -> int:
    """FLOPs counted while one steady-state block (full window, modulations cached) is generated."""
    torch.manual_seed(0)
    model = DiT(cfg).eval().requires_grad_(False)
    s = make_streamer(model, mask, SamplerConfig(steps=steps, cfg_scale=2.0 if guided else 1.0))
    s.set_prompt(torch.randn(1, cfg.text_dim), torch.ones(1, dtype=torch.bool))
    s.reset()
    for _ in range(cfg.window_chunks + 1):  # fill the window: the next block is steady state
        s.next_block()
    return count_flops(s.next_block)


@pytest.mark.parametrize("pitch_bins", [0, 12])
@pytest.mark.parametrize("mask", ["outpainting", "enc_dec", "block_causal"])
@pytest.mark.parametrize("guided", [True, False])
def test_dit_streamer_flops_match_the_formula(mask, guided, pitch_bins):
    cfg = dataclasses.replace(CFG, pitch_bins=pitch_bins, control_dim=7 if pitch_bins else CFG.control_dim)
    counted = steady_block_flops(cfg, mask, 3, guided)
    assert counted == dit_block_flops(cfg, mask, 3, guided)


# A tiny DiT whose block costs are derived by hand below, independently of lmdm.bench.cost.
TINY = DiTConfig(latent_channels=2, d_model=8, n_layers=1, n_heads=2, mlp_ratio=4.0, text_dim=4, control_dim=3,
                 block_frames=2, window_chunks=2)


def tiny_known_answer(mask: str, rows: int, steps: int = 2) -> int:
    """FLOPs of one steady-state block of TINY, written out as multiply-adds (MACs) per token / vector.

    d = 8, MLP hidden 32, ch = 2, B = 2, C = W * B = 4; a FLOP is 2 MACs (FlopCounterMode's convention).
    """
    embed = 2 * 8  # in_proj of one group of latent channels (ch = 2) -> d; all-zero groups are skipped: 16 MACs
    qkv = 8 * 24  # the key/value (and query) projection: 192 MACs per token
    layer = qkv + 8 * 8 + 2 * 8 * 32  # qkv + attention out-proj + MLP: 768 MACs per token
    attend = 2 * 8  # QK^T and AV: 16 MACs per (query, key) pair, summed over heads
    out = 8 * 2  # out_proj: 16 MACs per token
    ada, final_ada, t_embed = 8 * 48, 8 * 16, 256 * 8 + 8 * 8  # per conditioning vector: 384, 128, 2112
    B, C = 2, 4
    if mask == "block_causal":
        # guidance rows are segments of one row: the rB target tokens attend to the C cached keys and all rB
        # target keys (the mask discards other segments'); every modulation is cached. The fused first step
        # batches the finished clean chunk's B tokens with them (keys: C + B + rB); TINY's one layer is the last,
        # where the clean tokens only project their keys and values (nothing reads their output).
        n = rows * B
        later = n * (embed + layer + out) + n * (C + n) * attend  # rows 1: 1792, rows 2: 3712
        fused = B * (embed + qkv) + n * (embed + layer + out) + n * (C + B + n) * attend  # 2272, 4256
        return 2 * (fused + (steps - 1) * later)
    # enc-dec: each row's B target tokens attend to C + B keys; modulations cached by the streamer
    target_step = rows * (B * (embed + layer + out) + B * (C + B) * attend)  # rows * 1792
    if mask == "enc_dec":
        # the context, once per block: its keys and values only (the last layer stops after them): 1216
        encode = C * (embed + qkv) + ada
        return 2 * (encode + steps * target_step)
    if mask == "outpainting":
        # every step: all C + B tokens of every row (noisy and clean channels), bidirectional; conditioning
        # recomputed (t_embed, one adaLN vector per layer, the head's adaLN once per segment)
        n = C + B
        per_row = n * (2 * embed + layer + out) + n * n * attend + t_embed + ada + final_ada  # 8096
        return 2 * steps * rows * per_row
    raise ValueError(mask)


@pytest.mark.parametrize("mask,guided,want", [
    ("block_causal", False, 8_128), ("block_causal", True, 15_936),
    ("enc_dec", False, 9_600), ("enc_dec", True, 16_768),
    ("outpainting", False, 32_384), ("outpainting", True, 64_768),
])
def test_counted_and_analytic_flops_equal_hand_derived_known_answers(mask, guided, want):
    assert tiny_known_answer(mask, rows=2 if guided else 1) == want  # the derivation, evaluated
    assert steady_block_flops(TINY, mask, 2, guided) == want
    assert dit_block_flops(TINY, mask, 2, guided) == want


def test_outpainting_costs_more_than_block_causal_and_the_ratio_grows_with_context():
    """Counted, not computed from the formulas: outpainting redoes the whole window every step."""
    ratios = []
    for w in (1, 2, 4):
        cfg = dataclasses.replace(TINY, window_chunks=w)
        ratios.append(steady_block_flops(cfg, "outpainting", 2, True) / steady_block_flops(cfg, "block_causal", 2, True))
    assert 1 < ratios[0] < ratios[1] < ratios[2], ratios


LMM_CFG = LMMConfig(d_model=32, n_heads=2, encoder_layers=2, decoder_layers=2, codebook_size=16, depth=3,
                    context_depth=2, block_frames=4, context_frames=8, latent_channels=24, text_dim=8)


def lmm_streamer(cfg_scale: float = 1.0) -> LMMStreamer:
    torch.manual_seed(0)
    model = LMM(LMM_CFG).eval().requires_grad_(False)
    s = LMMStreamer(model, ResidualQuantizer.sampled(LMM_CFG.depth, LMM_CFG.codebook_size, LMM_CFG.latent_channels),
                    cfg_scale=cfg_scale)
    s.text = torch.randn(1, 8)
    s.reset(torch.randn(1, 8, 24, generator=torch.Generator().manual_seed(1)))
    return s


@pytest.mark.parametrize("guided", [False, True])
def test_lmm_flops_match_the_formula(guided):
    assert count_flops(lmm_streamer(2.0 if guided else 1.0).next_block) == lmm_block_flops(LMM_CFG, guided)


def test_guided_lmm_runs_two_rows_for_exactly_twice_the_flops_and_guidance_steers_the_tokens():
    assert lmm_block_flops(LMM_CFG, guided=True) == 2 * lmm_block_flops(LMM_CFG)
    # untrained weights give nearly uniform logits, so only a large scale moves the seeded draw
    plain, guided, again = lmm_streamer(1.0), lmm_streamer(50.0), lmm_streamer(1.0)
    a, b, c = plain.next_block(), guided.next_block(), again.next_block()
    assert a.shape == b.shape == (1, LMM_CFG.block_frames, LMM_CFG.latent_channels)
    assert torch.equal(a, c) and not torch.equal(a, b)  # same seed: only the guidance changed the draw


@pytest.mark.parametrize("mask", ["outpainting", "enc_dec", "block_causal"])
def test_sequential_passes_are_counted_as_defined(mask):
    torch.manual_seed(0)
    model = DiT(CFG).eval().requires_grad_(False)
    s = make_streamer(model, mask, SamplerConfig(steps=3, cfg_scale=2.0))
    s.set_prompt(torch.randn(1, CFG.text_dim), torch.ones(1, dtype=torch.bool))
    s.reset()
    for _ in range(CFG.window_chunks + 1):
        s.next_block()
    want = {"outpainting": 3, "enc_dec": 4, "block_causal": 3}[mask]
    assert count_passes(s.next_block, first_layers(model)) == sequential_passes(mask, 3) == want


def test_lmm_makes_one_pass_per_token_plus_its_encoder():
    for scale in (1.0, 2.0):  # guidance batches the rows: no extra passes
        s = lmm_streamer(scale)
        n = count_passes(s.next_block, first_layers(s.model))
        assert n == sequential_passes("lmm", 8, LMM_CFG) == 1 + LMM_CFG.block_frames * LMM_CFG.depth




def test_matched_lmm_has_about_the_dit_parameter_count():
    dit = DiT(DiTConfig()).num_params()
    cfg = matched_config(dit)
    assert abs(count_params(cfg) - dit) / dit < 0.1
    assert LMM(cfg).num_params() == count_params(cfg)


@pytest.mark.parametrize("guided", [False, True])
def test_the_fused_steps_flop_ratio_is_the_clean_chunk_beside_the_targets(guided):
    """The fused first step computes the subsequent step's target tokens plus one clean chunk (without its last
    layer's attention and MLP): more than one step, less than ``1 + 1 / rows`` of one (the bundled model at
    guidance 2: 1.47)."""
    from lmdm.bench.cost import fused_step_flop_ratio

    cfg = DiTConfig(latent_channels=64, d_model=256, n_layers=8, n_heads=4, block_frames=16, window_chunks=4)
    rows = 2 if guided else 1
    one, two = (dit_block_flops(cfg, "block_causal", s, guided) for s in (1, 2))
    ratio = fused_step_flop_ratio(cfg, guided)
    assert ratio == pytest.approx(one / (two - one)) and 1 < ratio < 1 + 1 / rows
    if guided:
        assert ratio == pytest.approx(1.465, abs=0.01)
