"""ARC-Forcing: losses equal their formulas; the exit step covers all S steps; rollouts carry controls and prompt
dropout and equal inference for the same seed and exit step; the exit step's differentiable cache path computes
what inference computes, and gradient reaches only the exit step of each block; each player's step leaves the
other's weights untouched; the discriminator scores negative captions; a run resumes exactly; own streams continue
where the last iteration left them, and a run with them resumes exactly. Negatives:
``tests/test_arc_negatives.py``; level: ``tests/test_arc_level.py``."""
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.checkpoint import load_checkpoint, save_checkpoint
from lmdm.config import ConfigError
from lmdm.control.features import control_input
from lmdm.diffusion import x0_from_velocity
from lmdm.errors import UsageError
from lmdm.model.cache import BlockCausalKVCache
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.model.layouts import block_causal_stream_tokens
from lmdm.streaming.level_guard import FRAME_QUANTILE, latent_set_ceiling
from lmdm.streaming.streamer import BlockCausalStreamer, SamplerConfig
from lmdm.train.arc import trainer as arc_trainer
from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.level import DecodedMel, LevelCeilings
from lmdm.train.arc.losses import contrastive_loss, relativistic_d_loss, relativistic_g_loss
from lmdm.train.arc.rollout import draw_exit_steps, rollout
from lmdm.train.arc.trainer import (
    ARCBatch,
    ARCConfig,
    ARCError,
    arc_iteration,
    arc_train,
    discriminator_step,
    draw_iteration,
    generator_step,
    own_stream_iteration,
    with_pretraining_dropouts,
)
from lmdm.train.arc.streams import OwnStreams
from lmdm.train.dataset import LatentSet, load_latent_set
from lmdm.train.state import latest_checkpoint

softplus = lambda x: math.log1p(math.exp(x))
MEL = DecodedMel(MelCodec(CodecConfig()))  # the raw-mel latent of tiny_student (512 = 4 frames x 128 bands)


def tiny_student(seed=0):
    torch.manual_seed(seed)
    m = DiT(DiTConfig(latent_channels=512, d_model=32, n_layers=2, n_heads=2, block_frames=4, window_chunks=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def tiny_batch(b=2, frames=16, seed=0, features=True):
    """Crops of ``W = 2`` context chunks and 2 blocks of the tiny student, with random control features."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.stack([torch.randn(b, frames, generator=g), (torch.rand(b, frames, generator=g) > 0.3).float(),
                         (torch.rand(b, frames, generator=g) > 0.7).float(), torch.randn(b, frames, generator=g)], -1)
    return ARCBatch(torch.randn(b, frames, 512, generator=g), torch.randn(b, 384, generator=g),
                    torch.randn(b, 384, generator=g), feats if features else None)


def tiny_cfg(**kw):
    base = {"batch_size": 2, "rollout_blocks": 2, "student_steps": 3, "prompt_dropout": 0.0, "control_dropout": 0.0,
            "control_group_dropout": 0.0}
    return ARCConfig(**{**base, **kw})


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def same(module, snap):
    return all(torch.equal(a, b) for a, b in zip(module.parameters(), snap))


# ---- losses ---------------------------------------------------------------------------------------------------
def test_losses_equal_their_formulas():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 3.0])
    diffs = [1.0, -1.0, -2.5]
    assert relativistic_d_loss(real, fake).item() == pytest.approx(sum(softplus(-d) for d in diffs) / 3, rel=1e-6)
    assert relativistic_g_loss(real, fake).item() == pytest.approx(sum(softplus(d) for d in diffs) / 3, rel=1e-6)
    assert contrastive_loss(real, fake).item() == pytest.approx(relativistic_d_loss(real, fake).item())
    # the items scored without their prompt do not count; none kept gives 0
    keep = torch.tensor([True, False, True])
    assert contrastive_loss(real, fake, keep).item() == pytest.approx((softplus(-1.0) + softplus(2.5)) / 2, rel=1e-6)
    assert contrastive_loss(real, fake, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    # a discriminator sure of itself has a small loss, the generator a large one
    assert relativistic_d_loss(torch.tensor([10.0]), torch.tensor([-10.0])) < 1e-6
    assert relativistic_g_loss(torch.tensor([10.0]), torch.tensor([-10.0])) > 19


# ---- the exit step, the rollout and inference -----------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exit_step_covers_all_steps(steps):
    """Self-Forcing draws the exit from 1..S: the step that makes the final audio is trained too."""
    draws = draw_exit_steps(400, steps, torch.Generator().manual_seed(0))
    assert set(draws) == set(range(1, steps + 1))


def test_arc_works_with_one_student_step():
    student = tiny_student()
    disc = Discriminator(student, n_layers=1, head_width=16)
    g0 = snapshot(student)
    out = arc_iteration(student, disc, torch.optim.AdamW(student.parameters(), lr=1e-3),
                        torch.optim.AdamW(disc.parameters(), lr=1e-3), tiny_batch(), tiny_cfg(student_steps=1),
                        torch.Generator().manual_seed(0), MEL)
    assert out["exit_steps"] == [1, 1] and all(math.isfinite(out[k]) for k in ("loss_g", "loss_d", "loss_c"))
    assert not same(student, g0)


def test_rollout_equals_inference_for_the_same_seed_and_exit_step():
    """A rollout streams what the cached streamer of ``lmdm generate`` streams (no guidance, same seed, prompts,
    prompt flags and controls): the plain blocks when every block exits at S, and the exit step's x0 prediction
    for other exits."""
    student = tiny_student()
    W, B = student.cfg.window_chunks, student.cfg.block_frames
    g = torch.Generator().manual_seed(4)
    ctx, text = torch.randn(2, W * B, 512, generator=g), torch.randn(2, 384, generator=g)
    has = torch.tensor([True, False])
    controls = control_input(tiny_batch(frames=3 * B).features, torch.tensor([[1, 1, 1], [1, 0, 1]]))
    # with a real context, and cold (an empty one: the stream's first blocks, as lmdm generate starts)
    for exits, context in (([4, 4, 4], ctx), ([1, 3, 2], ctx), ([4, 2, 4], ctx[:, :0])):
        ro = rollout(student, context, text, has, exits, 4, torch.Generator().manual_seed(7), controls)
        streamer = BlockCausalStreamer(student, SamplerConfig(steps=4, sampler="pingpong", cfg_scale=1.0, seed=7),
                                       batch=2)
        streamer.set_prompt(text, has)
        streamer.reset(context if context.shape[1] else None)
        for n, k in enumerate(exits):
            ctrl = controls[:, n * B : (n + 1) * B]
            block = streamer.next_block(ctrl) if k == 4 else streamer.next_block(ctrl, exit_step=k)
            assert (block - ro.per_block[n]).abs().max() < 1e-5, (exits, n)


def test_context_noise_noises_what_the_student_reads_and_returns_clean_blocks(monkeypatch):
    """``context_noise``: the cache is filled with ``context + sigma * eps`` and every finished block is cached as
    ``x0 + sigma * eps`` (``sigma`` per stream, uniform in ``[0, context_noise]``, drawn first); the blocks the
    rollout returns are the clean ones. At 0 nothing is drawn (the inference test above)."""
    student = tiny_student()
    W, B = student.cfg.window_chunks, student.cfg.block_frames
    g = torch.Generator().manual_seed(4)
    ctx, text = torch.randn(2, W * B, 512, generator=g), torch.randn(2, 384, generator=g)
    has, c = torch.tensor([True, True]), 0.5
    # one block: the same as a clean-context rollout of the noised context, on the same generator
    one = rollout(student, ctx, text, has, [3], 3, torch.Generator().manual_seed(7), context_noise=c)
    g = torch.Generator().manual_seed(7)
    sigma = c * torch.rand(2, generator=g)
    noisy = ctx + sigma[:, None, None] * torch.randn(ctx.shape, generator=g)
    assert ((sigma > 0) & (sigma <= c)).all()
    assert (one.blocks - rollout(student, noisy, text, has, [3], 3, g).blocks).abs().max() < 1e-5
    assert (one.blocks - rollout(student, ctx, text, has, [3], 3, torch.Generator().manual_seed(7)).blocks
            ).abs().max() > 1e-3  # the noise changed what it read
    # two blocks: the first block enters the cache noised, by the same sigma per stream
    advanced = []
    real_advance = BlockCausalKVCache.advance
    monkeypatch.setattr(BlockCausalKVCache, "advance", lambda self, x: advanced.append(x.clone())
                        or real_advance(self, x))
    two = rollout(student, ctx, text, has, [3, 3], 3, torch.Generator().manual_seed(7), context_noise=c)
    assert torch.equal(two.per_block[0], one.blocks)  # the same draws up to the first block
    z = (advanced[0] - two.per_block[0].detach()) / sigma[:, None, None]
    assert z.abs().max() > 0 and 0.9 < float(z.std()) < 1.1
    with pytest.raises(UsageError):
        rollout(student, ctx, text, has, [3], 3, torch.Generator().manual_seed(7), context_noise=-0.1)


def test_both_rollouts_of_an_arc_run_read_a_noised_context(monkeypatch):
    """``ARCConfig.context_noise`` reaches the adversarial rollout and the own streams' rollouts."""
    seen = []
    real_rollout = arc_trainer.rollout

    def recording_rollout(*args, **kw):
        seen.append(args[8] if len(args) > 8 else kw.get("context_noise", 0.0))
        return real_rollout(*args, **kw)

    monkeypatch.setattr(arc_trainer, "rollout", recording_rollout)
    student, data = tiny_student(), tiny_latent_set()
    cfg = tiny_cfg(context_noise=0.3, own_stream_every=1)
    disc = Discriminator(student, n_layers=1, head_width=16)
    opt_g = torch.optim.AdamW(student.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    out = arc_iteration(student, disc, opt_g, torch.optim.AdamW(disc.parameters(), lr=1e-3), tiny_batch(), cfg,
                        gen, MEL)
    assert math.isfinite(out["loss_g"])
    C, N, B = student.cfg.context_frames, cfg.rollout_blocks, student.cfg.block_frames
    own_stream_iteration(student, opt_g, OwnStreams(cfg.batch_size, C, 512), data,
                         data.valid_starts("train", C + N * B), cfg, gen, MEL, None)
    assert len(seen) >= 2 and all(x == 0.3 for x in seen)


def test_controls_and_prompt_dropout_reach_the_rollout(monkeypatch):
    """Rollouts run with the crop's control channels (a model whose output depends on them streams other
    blocks without), and the iteration applies pretraining's dropouts: control dropout 0 passes every group of
    the real features, 1 passes none; prompt dropout 1 runs every rollout unconditioned."""
    student = tiny_student()
    W, B = student.cfg.window_chunks, student.cfg.block_frames
    batch = tiny_batch()
    controls = control_input(batch.features, torch.ones(2, 3))
    args = {"exit_steps": [2, 2], "steps": 2}
    with_ctrl = rollout(student, batch.x0[:, : W * B], batch.text, torch.ones(2, dtype=torch.bool),
                        generator=torch.Generator().manual_seed(0), controls=controls[:, W * B :], **args)
    without = rollout(student, batch.x0[:, : W * B], batch.text, torch.ones(2, dtype=torch.bool),
                      generator=torch.Generator().manual_seed(0), **args)
    assert (with_ctrl.blocks - without.blocks).abs().max() > 1e-3

    seen = []
    real_rollout = arc_trainer.rollout

    def spy(model, context, text, has_text, exit_steps, steps, generator, controls=None, context_noise=0.0):
        seen.append((has_text.clone(), None if controls is None else controls.clone()))
        return real_rollout(model, context, text, has_text, exit_steps, steps, generator, controls, context_noise)

    monkeypatch.setattr(arc_trainer, "rollout", spy)
    disc = Discriminator(student, n_layers=1, head_width=16)
    for cfg in (tiny_cfg(), tiny_cfg(control_dropout=1.0, prompt_dropout=1.0)):
        arc_iteration(student, disc, torch.optim.AdamW(student.parameters(), lr=1e-5),
                      torch.optim.AdamW(disc.parameters(), lr=1e-5), batch, cfg, torch.Generator().manual_seed(0), MEL)
    (has_on, ctrl_on), (has_off, ctrl_off) = seen
    assert has_on.all() and not has_off.any()
    assert torch.equal(ctrl_on, controls[:, W * B :])  # every group of the real continuation's features
    assert not ctrl_off.any()  # all groups dropped: features and presence flags zero


def test_step_with_grad_gives_the_numbers_of_step():
    """The exit step's differentiable path (concatenated keys, pending block written first) computes what the
    inference path (reused buffers, fused first step) computes, for the fused first step and a later one, with
    and without controls."""
    student = tiny_student()
    g = torch.Generator().manual_seed(2)
    ctx, block = torch.randn(2, 8, 512, generator=g), torch.randn(2, 4, 512, generator=g)
    text_c = student.text_cond(torch.randn(2, 384, generator=g), torch.ones(2, dtype=torch.bool))
    controls = control_input(tiny_batch(frames=4).features, torch.ones(2, 3))
    for ctrl in (None, controls):
        plain, grad = BlockCausalKVCache(student, batch=2), BlockCausalKVCache(student, batch=2)
        for cache in (plain, grad):
            cache.bootstrap(ctx)
            cache.advance(block)
        for _ in range(2):  # the fused first step (writes the pending block), then a plain step
            x_t, t = torch.randn(2, 4, 512, generator=g), torch.rand(2, generator=g)
            v = plain.step(x_t, t, text_c, ctrl)
            v_grad = grad.step_with_grad(x_t, t, text_c, ctrl)
            assert v_grad.requires_grad and not v.requires_grad
            assert (v - v_grad).abs().max() < 1e-5
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain.k + plain.v, grad.k + grad.v))


def test_gradient_reaches_the_parameters_only_through_each_blocks_exit_step(monkeypatch):
    """The steps before each block's exit run without gradient, and the parameter gradient of a rollout equals
    the gradient of its exit steps alone, recomputed from detached inputs: each block's exit input and clean
    history are constants (a fresh cache prefilled without gradient), so no gradient flows through earlier
    denoising steps or earlier blocks. The recomputed blocks also equal the uncached masked forward pass (the
    slow reference of ``lmdm.model.layouts``). The exits include S, the step that makes the final audio."""
    student = tiny_student()
    W, B = student.cfg.window_chunks, student.cfg.block_frames
    g = torch.Generator().manual_seed(3)
    ctx, text = torch.randn(2, W * B, 512, generator=g), torch.randn(2, 384, generator=g)
    has = torch.ones(2, dtype=torch.bool)
    exits = []  # (cache chunk, x_t, t) of every differentiable step
    plain_steps = []  # (cache chunk, grad mode) of every other step
    step_with_grad, step = BlockCausalKVCache.step_with_grad, BlockCausalKVCache.step

    def spy_grad(self, x_t, t, text_c, controls=None):
        exits.append((self.next_chunk, x_t.detach().clone(), t.clone()))
        return step_with_grad(self, x_t, t, text_c, controls)

    def spy_step(self, x_t, t, text_c, controls=None, mods=None):
        plain_steps.append((self.next_chunk, torch.is_grad_enabled()))
        return step(self, x_t, t, text_c, controls, mods)

    monkeypatch.setattr(BlockCausalKVCache, "step_with_grad", spy_grad)
    monkeypatch.setattr(BlockCausalKVCache, "step", spy_step)
    exit_steps = [4, 1, 3, 2]
    ro = rollout(student, ctx, text, has, exit_steps, 4, torch.Generator().manual_seed(1))
    monkeypatch.setattr(BlockCausalKVCache, "step_with_grad", step_with_grad)
    monkeypatch.setattr(BlockCausalKVCache, "step", step)
    assert ro.exit_steps == exit_steps
    assert [chunk for chunk, _, _ in exits] == [W + n for n in range(4)]  # one differentiable step per block
    assert [chunk for chunk, _ in plain_steps] == [W + n for n, k in enumerate(exit_steps) for _ in range(k - 1)]
    assert not any(grad_mode for _, grad_mode in plain_steps)  # the steps before the exit: no gradient
    weights = [torch.randn(blk.shape, generator=g) for blk in ro.per_block]
    params = list(student.parameters())
    got = torch.autograd.grad(sum((blk * w).sum() for blk, w in zip(ro.per_block, weights)), params,
                              allow_unused=True)
    ref_loss = 0.0
    for n, ((_, x_t, t), w) in enumerate(zip(exits, weights)):
        history = torch.cat([ctx, *[blk.detach() for blk in ro.per_block[:n]]], 1)
        cache = BlockCausalKVCache(student, batch=2)
        cache.bootstrap(history)  # prefilled without gradient, chunk by chunk: the streamed cache's keys
        x0 = x0_from_velocity(x_t, cache.step_with_grad(x_t, t, student.text_cond(text, has)), t)
        with torch.no_grad():
            v_ref = student(block_causal_stream_tokens(history, x_t, t, W), text, has)[:, -B:]
        assert (x0 - ro.per_block[n]).abs().max() < 1e-4
        assert (x0 - x0_from_velocity(x_t, v_ref, t)).abs().max() < 1e-4
        ref_loss = ref_loss + (x0 * w).sum()
    ref = torch.autograd.grad(ref_loss, params, allow_unused=True)
    assert sum(r is not None for r in ref) > len(params) // 2
    for a, r in zip(got, ref):
        assert (a is None) == (r is None)
        if r is not None:
            assert torch.allclose(a, r, rtol=1e-3, atol=1e-5 * r.abs().max().item() + 1e-8)


# ---- the two players ------------------------------------------------------------------------------------------
def test_each_players_step_leaves_the_others_weights_untouched():
    """The generator step changes the student only (the discriminator's weights, gradients, optimiser state and
    trainability are as before); the discriminator step changes the discriminator only (the student's weights
    and gradients are as the generator step left them)."""
    student = tiny_student()
    disc = Discriminator(student, n_layers=1, head_width=16)
    opt_g = torch.optim.AdamW(student.parameters(), lr=1e-3)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    cfg, gen = tiny_cfg(), torch.Generator().manual_seed(0)
    batch = tiny_batch()
    draw = draw_iteration(batch, cfg, gen)
    g0, d0 = snapshot(student), snapshot(disc)
    x_fake, out = generator_step(student, disc, opt_g, batch, draw, cfg, gen, MEL)
    assert not same(student, g0) and same(disc, d0)
    assert all(p.grad is None and p.requires_grad for p in disc.parameters()) and not opt_d.state
    assert not x_fake.requires_grad and all(math.isfinite(out[k]) for k in ("loss_g", "loss_level"))
    g1 = snapshot(student)
    grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    out = discriminator_step(disc, opt_d, batch, draw, x_fake, cfg, student.cfg.context_frames)
    assert same(student, g1) and not same(disc, d0)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, [p for p in student.parameters() if p.grad is not None]))
    assert all(math.isfinite(out[k]) for k in ("loss_d", "loss_c", "d_real", "d_fake"))


def test_one_tiny_arc_step_scores_real_fake_and_negative_captions():
    student = tiny_student()
    disc = Discriminator(student, n_layers=1, head_width=16)
    assert disc.num_params() > 0
    calls = []  # (prompts, prompt flags, controls) of every discriminator call
    forward = disc.forward
    disc.forward = lambda x_t, t, text, has, start, controls=None: calls.append(
        (text.clone(), has.clone(), controls)) or forward(x_t, t, text, has, start, controls)
    batch = tiny_batch()
    original = batch.text.clone()
    out = arc_iteration(student, disc, torch.optim.AdamW(student.parameters(), lr=1e-3),
                        torch.optim.AdamW(disc.parameters(), lr=1e-3), batch, tiny_cfg(),
                        torch.Generator().manual_seed(0), MEL)
    assert all(math.isfinite(out[k]) for k in ("loss_g", "loss_level", "loss_d", "loss_c"))
    # G: real, fake; D: real, fake, real with the negative captions; all with the crops' controls
    assert len(calls) == 5 and torch.equal(batch.text, original)
    assert all(torch.equal(text, original) for text, _, _ in calls[:4])
    assert torch.equal(calls[4][0], batch.negative) and calls[4][1].all()
    assert all(c is not None and c.shape == (2, 16, 7) for _, _, c in calls)


@pytest.mark.parametrize("bf16", [None, True])
def test_arc_autocasts_off_the_cpu_by_default_and_on_it_when_asked(bf16):
    """ARC on the CPU stays float32 by default (its numbers before it had a device); bf16=True autocasts the
    rollout and the discriminator there too, with losses in float32."""
    student = tiny_student()
    disc = Discriminator(student, n_layers=1, head_width=16)
    seen = []
    forward = disc.forward
    disc.forward = lambda *a: seen.append(torch.is_autocast_enabled("cpu")) or forward(*a)
    out = arc_iteration(student, disc, torch.optim.AdamW(student.parameters(), lr=1e-3),
                        torch.optim.AdamW(disc.parameters(), lr=1e-3), tiny_batch(), tiny_cfg(bf16=bf16),
                        torch.Generator().manual_seed(0), MEL)
    assert seen == [bool(bf16)] * 5
    assert all(math.isfinite(out[k]) for k in ("loss_g", "loss_d", "loss_c"))
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in disc.head.parameters())


# ---- config and run -------------------------------------------------------------------------------------------
def test_config_takes_the_pretraining_dropouts_of_the_base_checkpoint():
    info = {"train_config": {"prompt_dropout": 0.2, "control_dropout": 0.3, "control_group_dropout": 0.4}}
    assert with_pretraining_dropouts(ARCConfig(), info) == ARCConfig(prompt_dropout=0.2, control_dropout=0.3,
                                                                      control_group_dropout=0.4)
    assert with_pretraining_dropouts(ARCConfig(control_dropout=0.0), info).control_dropout == 0.0
    defaults = with_pretraining_dropouts(ARCConfig(), {})  # a checkpoint that records none: TrainConfig's
    assert (defaults.prompt_dropout, defaults.control_dropout, defaults.control_group_dropout) == (0.1, 0.5, 0.3)
    with pytest.raises(ConfigError, match="with_pretraining_dropouts"):
        draw_iteration(tiny_batch(), ARCConfig(), torch.Generator())
    assert ARCConfig(student_steps=1, batch_size=1).student_steps == 1
    for bad in ({"student_steps": 0}, {"control_dropout": 1.5}, {"level_weight": -1.0}):
        with pytest.raises(ConfigError):
            ARCConfig(**bad)


def test_arc_run_checkpoints_and_resumes_exactly(real_data, tmp_path):
    base = tmp_path / "base"
    save_checkpoint(base, tiny_student(), MelCodec(CodecConfig()), dtype=torch.float32)
    cfg = ARCConfig(init_from=str(base), data=str(real_data), run_dir=str(tmp_path / "arc"), steps=2, batch_size=2,
                    rollout_blocks=2, student_steps=3, disc_layers=1, disc_head_width=16, ckpt_every=1, log_every=1)
    r = arc_train(cfg, progress=False)
    assert r.step == 2 and (r.final_dir / "model.safetensors").is_file() and r.disc_params > 0
    # the export stores the training split's loudest 0.4 s and its FRAME_QUANTILE 16 ms frame, the level guard's
    # ceilings (lmdm.streaming.level_guard)
    data = load_latent_set(real_data, CodecConfig(), progress=False)
    info = load_checkpoint(r.final_dir).info
    assert info["level_ceiling"] == latent_set_ceiling(MelCodec(CodecConfig()), data)
    assert info["frame_level_ceiling"] == latent_set_ceiling(MelCodec(CodecConfig()), data, FRAME_QUANTILE, frames=1)
    with pytest.raises(ARCError, match="--resume"):
        arc_train(cfg, progress=False)
    with pytest.raises(ARCError, match=r"differs.*\['lr_g'\]"):
        arc_train(replace(cfg, lr_g=1.0), resume=True, progress=False)
    r2 = arc_train(replace(cfg, steps=3), resume=True, progress=False)
    assert r2.step == 3
    # resuming restored student, discriminator, optimisers, EMA and RNG: the straight 3-step run's numbers
    straight = arc_train(replace(cfg, steps=3, run_dir=str(tmp_path / "straight")), progress=False)
    assert r2.last["exit_steps"] == straight.last["exit_steps"]
    assert all(r2.last[k] == pytest.approx(straight.last[k], rel=1e-5)
               for k in ("loss_g", "loss_level", "loss_d", "loss_c"))
    for name in ("model", "disc", "ema"):
        a = load_file(str(latest_checkpoint(tmp_path / "arc") / f"{name}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "straight") / f"{name}.safetensors"))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    log = (tmp_path / "arc" / "log.csv").read_text().splitlines()
    assert log[0].split(",")[:3] == ["step", "loss_g", "loss_level"]


# ---- own streams ----------------------------------------------------------------------------------------------
def tiny_latent_set(frames=(40, 30, 50), seed=0) -> LatentSet:
    """Three "train" works of random raw-mel latent frames, one caption each."""
    g = torch.Generator().manual_seed(seed)
    n, total = len(frames), sum(frames)
    return LatentSet(latents=torch.randn(total, 512, generator=g).half(), features=torch.zeros(total, 4),
                     frame_work=torch.cat([torch.full((f,), i) for i, f in enumerate(frames)]).int(),
                     work_start=torch.tensor([sum(frames[:i]) for i in range(n)]), work_frames=torch.tensor(frames),
                     captions=torch.randn(n, 384, generator=g), caption_start=torch.arange(n),
                     caption_count=torch.ones(n, dtype=torch.long), work_ids=[f"w{i}" for i in range(n)],
                     splits=["train"] * n, texts=[f"work {i}" for i in range(n)])


def test_own_streams_continue_where_the_last_iteration_left_them(monkeypatch):
    """An own-stream iteration starts each stream from a real crop's context the first time, continues it from
    its own last W chunks afterwards, compares it with real crops of the stream's own work, and trains the
    student; with ``own_stream_blocks = N`` every stream restarts every time."""
    student, data = tiny_student(), tiny_latent_set()
    cfg = tiny_cfg(own_stream_every=1, own_stream_blocks=10**9, ceiling_weight=1.0, momentary_weight=1.0,
                   crest_weight=1.0, frame_weight=1.0, peak_weight=1.0)
    C, N, B = student.cfg.context_frames, cfg.rollout_blocks, student.cfg.block_frames
    starts = data.valid_starts("train", C + N * B)
    streams = OwnStreams(cfg.batch_size, C, 512)
    seen = {"ctx": [], "blocks": [], "real_works": []}
    real_rollout, real_starts = arc_trainer.rollout, arc_trainer.same_work_starts

    def recording_rollout(model, context, *args, **kw):
        seen["ctx"].append(context.detach().clone())
        out = real_rollout(model, context, *args, **kw)
        seen["blocks"].append(out.blocks.detach().float())
        return out

    def recording_starts(data_, work, frames, gen):
        first = real_starts(data_, work, frames, gen)
        seen["real_works"].append((data_.frame_work[first].long(), work.clone()))
        return first

    monkeypatch.setattr(arc_trainer, "rollout", recording_rollout)
    monkeypatch.setattr(arc_trainer, "same_work_starts", recording_starts)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    ceiling = LevelCeilings(band=torch.full((128,), 0.5), momentary=0.5, crest=-1.0, frame=0.5, peak=1e-6)
    before = snapshot(student)
    outs = [own_stream_iteration(student, opt, streams, data, starts, cfg, gen, MEL, ceiling) for _ in range(3)]
    assert not same(student, before)
    assert [o["stream_blocks"] for o in outs] == [2.0, 4.0, 6.0] and all(o["restarted"] == 0 for o in outs[1:])
    assert all(o["own_ceiling"] > 0 and o["own_momentary"] > 0 and o["own_crest"] > 0 and o["own_frame"] > 0
               and o["own_peak"] > 0 for o in outs)  # all rise above
    # the first context is real music of the stream's work; each later one is the end of the stream before it
    lat = data.latents.float()
    for i in range(cfg.batch_size):
        w = int(streams.work[i])
        s0, n = int(data.work_start[w]), int(data.work_frames[w])
        assert any(torch.equal(seen["ctx"][0][i], lat[s : s + C]) for s in range(s0, s0 + n - C + 1))
    for found, work in seen["real_works"]:
        assert torch.equal(found, work)
    for k in (1, 2, 3):
        stream = torch.cat([seen["ctx"][k - 1], seen["blocks"][k - 1]], 1)
        now = seen["ctx"][k] if k < 3 else streams.context
        assert torch.equal(now, stream[:, -C:]) and not torch.equal(now, seen["ctx"][k - 1])
    # a mean length of N blocks restarts every stream every time
    out = own_stream_iteration(student, opt, streams, data, starts, replace(cfg, own_stream_blocks=N), gen, MEL,
                               None)
    assert out["restarted"] == 1.0 and out["stream_blocks"] == N
    assert out["own_ceiling"] == out["own_momentary"] == out["own_crest"] == out["own_frame"] == 0.0


def test_own_streams_sample_with_own_stream_steps(monkeypatch):
    """``own_stream_steps`` sets the own streams' sampler (every block exits at its last step); 0 keeps
    ``student_steps``."""
    student, data = tiny_student(), tiny_latent_set()
    C, B = student.cfg.context_frames, student.cfg.block_frames
    seen = []
    real_rollout = arc_trainer.rollout

    def recording_rollout(model, context, text, has_text, exit_steps, steps, *args, **kw):
        seen.append((list(exit_steps), steps))
        return real_rollout(model, context, text, has_text, exit_steps, steps, *args, **kw)

    monkeypatch.setattr(arc_trainer, "rollout", recording_rollout)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for own_steps, expect in ((0, 4), (2, 2)):
        cfg = tiny_cfg(own_stream_every=1, own_stream_blocks=10**9, student_steps=4, own_stream_steps=own_steps)
        starts = data.valid_starts("train", C + cfg.rollout_blocks * B)
        streams = OwnStreams(cfg.batch_size, C, 512)
        own_stream_iteration(student, opt, streams, data, starts, cfg, torch.Generator().manual_seed(0), MEL, None)
        assert seen[-1] == ([expect] * cfg.rollout_blocks, expect)
    # alternate steps: the first half of the streams at own_stream_steps, the second half at the alternative
    cfg = tiny_cfg(own_stream_every=1, own_stream_blocks=10**9, student_steps=4, batch_size=4, own_stream_alt_steps=2)
    starts = data.valid_starts("train", C + cfg.rollout_blocks * B)
    streams = OwnStreams(cfg.batch_size, C, 512)
    seen.clear()
    out = own_stream_iteration(student, opt, streams, data, starts, cfg, torch.Generator().manual_seed(0), MEL, None)
    assert seen == [([4] * cfg.rollout_blocks, 4), ([2] * cfg.rollout_blocks, 2)]
    assert out["stream_blocks"] == cfg.rollout_blocks and streams.context.abs().sum() > 0


def record_contexts(monkeypatch) -> list:
    """Patch ARC's rollout to record each context it is given (detached copies, in call order) and return that list."""
    seen = []
    real_rollout = arc_trainer.rollout

    def recording_rollout(model, context, *args, **kw):
        seen.append(context.detach().clone())
        return real_rollout(model, context, *args, **kw)

    monkeypatch.setattr(arc_trainer, "rollout", recording_rollout)
    return seen


def fresh_own_iteration(data, ceiling=None, **kw):
    """One own-stream iteration of a fresh tiny student on fresh streams (``tiny_cfg(own_stream_every=1, **kw)``,
    streams that never restart, RNG seed 0): ``(student after it, its metrics)``."""
    student = tiny_student()
    C, B = student.cfg.context_frames, student.cfg.block_frames
    cfg = tiny_cfg(own_stream_every=1, own_stream_blocks=10**9, **kw)
    starts = data.valid_starts("train", C + cfg.rollout_blocks * B)
    out = own_stream_iteration(student, torch.optim.AdamW(student.parameters(), lr=1e-3),
                               OwnStreams(cfg.batch_size, C, 512), data, starts, cfg, torch.Generator().manual_seed(0),
                               MEL, ceiling)
    return student, out


def test_level_kicks_play_some_own_stream_contexts_louder_or_quieter(monkeypatch):
    """With ``own_stream_kick_db = k`` and ``own_stream_kick_p = 1`` every stream's context reaches the rollout
    shifted by one gain per stream, within ``[-k, k]`` dB (on the raw-mel latent: the same offset in every band
    above the floor), drawn after everything else the iteration draws before its rollout; ``p = 0`` kicks none;
    off (``k = 0``) draws nothing extra."""
    data = tiny_latent_set()
    seen = record_contexts(monkeypatch)
    outs = {}
    for name, kick in (("off", {}), ("all", {"own_stream_kick_db": 10.0, "own_stream_kick_p": 1.0}),
                       ("none", {"own_stream_kick_db": 10.0, "own_stream_kick_p": 0.0})):
        outs[name] = fresh_own_iteration(data, **kick)[1]
    off, kicked, none = seen
    assert outs["off"]["kicked"] == outs["none"]["kicked"] == 0.0 and outs["all"]["kicked"] == 1.0
    assert torch.equal(off, none)
    shift = MEL(kicked) - MEL(off)
    unit = 1 / (20 * math.log10(math.e)) / MEL.std  # normalised log-mel per dB
    for i in range(len(off)):
        loud = MEL(off)[i] > MEL.floor + 10 * unit + 1e-3
        offset = shift[i][loud]
        assert offset.std() < 1e-5 and 0 < offset.abs().mean() <= 10 * unit + 1e-5
    assert len({round(float(shift[i][MEL(off)[i] > 0].mean()), 4) for i in range(len(off))}) == len(off)
    # bass kicks (own_stream_kick_hz): the same draws, the same gains, on the bands below 150 Hz only
    seen.clear()
    fresh_own_iteration(data, own_stream_kick_db=10.0, own_stream_kick_p=1.0, own_stream_kick_hz=150.0)
    bass = MEL(seen[0]) - MEL(off)
    low = MEL.band_hz < 150.0
    assert torch.equal(bass[..., ~low], torch.zeros_like(bass[..., ~low]))
    assert torch.allclose(bass[..., low], shift[..., low], atol=1e-5)


def test_drone_contexts_reach_the_rollout_and_the_loop_gain_term_trains_on_them(monkeypatch):
    """With ``own_stream_drone_p = 1`` every warm stream's context reaches the rollout with a drone mixed in (bands
    only raised, the bass louder), drawn after the kicks; the loop-gain term is reported and changes the update;
    ``p = 0`` and off leave the context and the draws as they were."""
    data = tiny_latent_set()
    B = tiny_student().cfg.block_frames
    seen = record_contexts(monkeypatch)
    outs, weights = {}, {}
    for name, drone in (("off", {}), ("none", {"own_stream_drone_p": 0.0}),
                        ("drone", {"own_stream_drone_p": 1.0, "own_stream_drone_db": 12.0}),
                        ("term", {"own_stream_drone_p": 1.0, "own_stream_drone_db": 12.0, "loop_gain_weight": 1e4,
                                  "loop_gain_margin_db": -40.0})):
        student, outs[name] = fresh_own_iteration(data, **drone)
        weights[name] = snapshot(student)
    off, none, droned, term = seen
    assert torch.equal(off, none) and outs["off"]["droned"] == outs["none"]["droned"] == 0.0
    assert outs["drone"]["droned"] == outs["term"]["droned"] == 1.0 and torch.equal(droned, term)
    raised = MEL(droned) - MEL(off)
    assert bool((raised >= -1e-5).all()) and bool((raised > 1e-3).any())
    from lmdm.train.arc.drone import band_level
    assert bool((band_level(MEL(droned), MEL, 150.0) > band_level(MEL(off), MEL, 150.0)).all())
    assert outs["drone"]["own_loop"] == outs["off"]["own_loop"] == 0.0 and outs["term"]["own_loop"] > 0
    assert not all(torch.equal(a, b) for a, b in zip(weights["drone"], weights["term"]))
    assert all(torch.equal(a, b) for a, b in zip(weights["off"], weights["none"]))
    # rising drones (own_stream_drone_rise_db): the context's bass grows from its first block to its last
    seen.clear()
    fresh_own_iteration(data, own_stream_drone_p=1.0, own_stream_drone_db=0.0, own_stream_drone_rise_db=20.0,
                        loop_gain_weight=1.0)
    first, last = MEL(seen[0][:, :B]), MEL(seen[0][:, -B:])
    assert bool((band_level(last, MEL, 150.0) > band_level(first, MEL, 150.0)).all())


def test_streams_at_a_loud_bass_get_the_loop_gain_term_without_a_drone():
    """With a ``loud_bass`` ceiling (``loop_gain_quantile``) every warm own stream whose context's last block is
    above it is hinged, drone or not, and trained on the term; above every stream's bass, none is; the training
    split's statistic is each block-long window's bass level (a chunk shorter than a block gives none)."""
    data = tiny_latent_set()
    outs = {name: fresh_own_iteration(data, LevelCeilings(loud_bass=loud), loop_gain_weight=1e4,
                                      loop_gain_margin_db=-40.0, loop_gain_quantile=0.5)[1]
            for name, loud in (("low", -100.0), ("high", 100.0))}
    assert outs["low"]["hinged"] == 1.0 and outs["low"]["own_loop"] > 0 and outs["low"]["droned"] == 0.0
    assert outs["high"]["hinged"] == 0.0 and outs["high"]["own_loop"] == 0.0
    from lmdm.train.arc.drone import band_level
    bass = MEL.band_hz < 150.0
    statistic = arc_trainer.block_bass_statistic(4 * MEL.patch, bass)
    part = torch.randn(1, 6 * MEL.patch, 128)
    values = statistic(part, MEL.std, MEL.momentary_frames)
    assert values.shape == (1, 2 * MEL.patch + 1)
    assert torch.allclose(values[0, -1], band_level(part[:, -4 * MEL.patch :], MEL, 150.0)[0], atol=1e-5)
    assert statistic(part[:, : 3 * MEL.patch], MEL.std, MEL.momentary_frames).shape == (1, 0)


def test_cold_own_streams_start_from_no_context(monkeypatch):
    """With ``own_stream_cold_p = 1`` a restarting stream rolls out from an empty context (the first blocks of a
    stream, as ``lmdm generate`` starts) and is not kicked; streams that go on keep theirs, in one batch with the
    cold ones, each row's new context the end of its own rollout; rollouts that cannot fill the context are
    refused."""
    student, data = tiny_student(), tiny_latent_set()
    C, B = student.cfg.context_frames, student.cfg.block_frames
    seen = []
    real_rollout = arc_trainer.rollout

    def recording_rollout(model, context, *args, **kw):
        out = real_rollout(model, context, *args, **kw)
        seen.append((context.detach().clone(), out.blocks.detach().float()))
        return out

    monkeypatch.setattr(arc_trainer, "rollout", recording_rollout)
    cfg = tiny_cfg(own_stream_every=1, own_stream_blocks=10**9, batch_size=4, own_stream_cold_p=1.0,
                   own_stream_kick_db=10.0, own_stream_kick_p=1.0)
    starts = data.valid_starts("train", C + cfg.rollout_blocks * B)
    streams = OwnStreams(cfg.batch_size, C, 512)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    before = snapshot(student)
    out = own_stream_iteration(student, opt, streams, data, starts, cfg, gen, MEL, None)
    assert out["cold"] == out["restarted"] == 1.0 and out["kicked"] == 0.0 and not same(student, before)
    (ctx, blocks), = seen
    assert ctx.shape == (4, 0, 512) and torch.equal(streams.context, blocks[:, -C:])
    # stream 1 restarts (cold), the others go on from their own context: two rollouts, rows back in place
    seen.clear()
    went_on = streams.context.clone()
    streams.blocks[1] = 0
    out = own_stream_iteration(student, opt, streams, data, starts, replace(cfg, own_stream_kick_p=0.0), gen, MEL,
                               None)
    assert out["cold"] == out["restarted"] == 0.25
    (warm_ctx, warm_blocks), (cold_ctx, cold_blocks) = seen
    assert torch.equal(warm_ctx, went_on[[0, 2, 3]]) and cold_ctx.shape == (1, 0, 512)
    assert torch.equal(streams.context[1], cold_blocks[0, -C:])
    assert torch.equal(streams.context[[0, 2, 3]], warm_blocks[:, -C:])
    with pytest.raises(ConfigError, match="window_chunks"):
        own_stream_iteration(student, opt, streams, data, starts, replace(cfg, rollout_blocks=1), gen, MEL, None)



def test_own_stream_adversarial_term_updates_each_player_in_its_own_step():
    """With ``own_stream_adv_weight`` the own streams play the adversarial game: the student's step adds the
    relativistic generator loss with the discriminator frozen (a discriminator optimiser with learning rate 0
    leaves it bit for bit, flags restored), the discriminator's step leaves the student untouched (a student
    optimiser with learning rate 0), the term changes the student's update; off (weight 0) the discriminator is
    not touched even with a live optimiser, and nothing is drawn for it; without the discriminator it is refused."""
    data = tiny_latent_set()

    def run(weight, lr_g, lr_d, with_disc=True):
        student = tiny_student()
        disc = Discriminator(student, n_layers=1, head_width=16)
        C, B = student.cfg.context_frames, student.cfg.block_frames
        cfg = tiny_cfg(own_stream_every=1, own_stream_blocks=10**9, own_stream_adv_weight=weight)
        starts = data.valid_starts("train", C + cfg.rollout_blocks * B)
        streams = OwnStreams(cfg.batch_size, C, 512)
        before = snapshot(student), snapshot(disc)
        gen = torch.Generator().manual_seed(0)
        out = own_stream_iteration(student, torch.optim.SGD(student.parameters(), lr=lr_g), streams, data, starts,
                                   cfg, gen, MEL, None, None, disc if with_disc else None,
                                   torch.optim.SGD(disc.parameters(), lr=lr_d))
        return out, student, disc, before, gen.initial_seed(), torch.rand(1, generator=gen)

    out, student, disc, (s0, d0), _, _ = run(1.0, 1e-3, 0.0)
    assert out["own_adv"] > 0 and out["own_d"] > 0
    assert same(disc, d0) and not same(student, s0)
    assert all(p.requires_grad for p in disc.parameters())
    adv_student = snapshot(student)
    out, student, disc, (s0, d0), _, _ = run(1.0, 0.0, 1e-3)
    assert same(student, s0) and not same(disc, d0)
    off, student, disc, (s0, d0), _, after_off = run(0.0, 1e-3, 1e-3)
    assert off["own_adv"] == off["own_d"] == 0.0 and same(disc, d0)
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), adv_student))
    _, _, _, _, _, after_on = run(1.0, 1e-3, 1e-3)
    assert not torch.equal(after_off, after_on)  # the term draws its timesteps and noise only when on
    with pytest.raises(ConfigError, match="discriminator"):
        run(1.0, 1e-3, 1e-3, with_disc=False)

def test_arc_run_refuses_unfillable_cold_starts_before_reading_data(tmp_path):
    base = tmp_path / "base"
    save_checkpoint(base, tiny_student(), MelCodec(CodecConfig()), dtype=torch.float32)
    cfg = ARCConfig(init_from=str(base), data=str(tmp_path / "no-data"), run_dir=str(tmp_path / "arc"), steps=1,
                    rollout_blocks=1, disc_layers=1, own_stream_every=2, own_stream_cold_p=1.0)
    with pytest.raises(ConfigError, match="window_chunks"):
        arc_train(cfg, progress=False)


def test_own_stream_settings_are_checked():
    for bad in ({"own_stream_every": -1}, {"own_stream_every": 2, "own_stream_blocks": 1},
                {"own_stream_every": 2, "level_weight": 0.0, "ceiling_weight": 0.0}, {"ceiling_weight": -1.0},
                {"momentary_weight": -1.0}, {"momentary_quantile": 1.5}, {"own_stream_steps": -1},
                {"own_stream_steps": 5, "student_steps": 4},
                {"own_stream_alt_steps": 5, "student_steps": 4}, {"own_stream_alt_steps": 2, "batch_size": 1},
                {"own_stream_kick_db": -1.0}, {"own_stream_kick_p": 1.5}, {"crest_weight": -1.0},
                {"crest_quantile": 1.5}, {"frame_weight": -1.0}, {"frame_quantile": -0.5},
                {"peak_weight": -1.0}, {"peak_dbfs": 1.0}, {"peak_dbfs": -30.0}, {"own_stream_cold_p": -0.1},
                {"own_stream_cold_p": 1.5}, {"own_stream_kick_hz": -150.0}, {"own_stream_adv_weight": -1.0},
                {"context_noise": -0.1}, {"own_stream_drone_p": 1.5}, {"own_stream_drone_db": -1.0},
                {"loop_gain_weight": -1.0}, {"loop_gain_hz": 30.0}, {"loop_gain_weight": 1.0},
                {"loop_gain_weight": 1.0, "own_stream_drone_p": 0.5}, {"own_stream_drone_rise_db": -1.0},
                {"loop_gain_quantile": 1.5},
                {"own_stream_every": 2, "level_weight": 0.0}):
        with pytest.raises(ConfigError):
            tiny_cfg(**bad)


def test_arc_run_with_own_streams_and_ceiling_resumes_exactly(real_data, tmp_path):
    """Every second iteration continues the own streams; the streams are checkpointed, so a run resumed before
    an own-stream iteration continues the very same streams."""
    base = tmp_path / "base"
    save_checkpoint(base, tiny_student(), MelCodec(CodecConfig()), dtype=torch.float32)
    cfg = ARCConfig(init_from=str(base), data=str(real_data), run_dir=str(tmp_path / "arc"), steps=2, batch_size=2,
                    rollout_blocks=2, student_steps=3, disc_layers=1, disc_head_width=16, ckpt_every=1, log_every=1,
                    own_stream_every=2, own_stream_blocks=100, ceiling_weight=1.0, momentary_weight=1.0,
                    own_stream_kick_db=6.0, own_stream_kick_p=0.5, crest_weight=1.0, frame_weight=1.0,
                    peak_weight=1.0, own_stream_cold_p=0.5, own_stream_drone_p=0.5, own_stream_drone_rise_db=6.0,
                    loop_gain_weight=1.0, loop_gain_quantile=0.9)
    arc_train(cfg, progress=False)
    streams = load_file(str(latest_checkpoint(tmp_path / "arc") / "streams.safetensors"))
    assert streams["blocks"].tolist() == [2, 2] and streams["context"].abs().sum() > 0
    r = arc_train(replace(cfg, steps=4), resume=True, progress=False)
    straight = arc_train(replace(cfg, steps=4, run_dir=str(tmp_path / "straight")), progress=False)
    assert r.last["stream_blocks"] == straight.last["stream_blocks"] == 4
    assert r.last["own_level"] == pytest.approx(straight.last["own_level"], rel=1e-5)
    assert r.last["own_loop"] == pytest.approx(straight.last["own_loop"], rel=1e-5, abs=1e-12)
    for name in ("model", "disc", "ema", "streams"):
        a = load_file(str(latest_checkpoint(tmp_path / "arc") / f"{name}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "straight") / f"{name}.safetensors"))
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), name
    log = (tmp_path / "arc" / "log.csv").read_text().splitlines()
    header, row4 = log[0].split(","), dict(zip(log[0].split(","), log[-1].split(",")))
    assert {"loss_ceiling", "loss_momentary", "own_level", "own_ceiling", "own_momentary",
            "stream_blocks"} <= set(header)
    # a logged own-stream iteration also shows the newest real-context iteration's losses
    assert row4["own_level"] and row4["loss_g"] and row4["loss_d"]
