"""ARC-Forcing: losses equal their formulas, the prompt roll always gives a negative on a copy, the exit step's
differentiable cache path computes what inference computes, gradient reaches only the exit step of each block, one
step changes both players, and a run resumes exactly."""
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from lmdm.audio.codec import CodecConfig, MelCodec
from lmdm.checkpoint import save_checkpoint
from lmdm.diffusion import x0_from_velocity
from lmdm.model.cache import BlockCausalKVCache
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT
from lmdm.model.layouts import block_causal_stream_tokens
from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.losses import contrastive_loss, relativistic_d_loss, relativistic_g_loss, roll_prompts
from lmdm.train.arc.rollout import rollout
from lmdm.train.arc.trainer import ARCConfig, ARCError, arc_iteration, arc_train
from lmdm.train.state import latest_checkpoint

softplus = lambda x: math.log1p(math.exp(x))


def tiny_student(seed=0):
    torch.manual_seed(seed)
    m = DiT(DiTConfig(latent_channels=512, d_model=32, n_layers=2, n_heads=2, block_frames=4, window_chunks=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_losses_equal_their_formulas():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 3.0])
    diffs = [1.0, -1.0, -2.5]
    assert relativistic_d_loss(real, fake).item() == pytest.approx(sum(softplus(-d) for d in diffs) / 3, rel=1e-6)
    assert relativistic_g_loss(real, fake).item() == pytest.approx(sum(softplus(d) for d in diffs) / 3, rel=1e-6)
    assert contrastive_loss(real, fake).item() == pytest.approx(relativistic_d_loss(real, fake).item())
    # a discriminator sure of itself has a small loss, the generator a large one
    assert relativistic_d_loss(torch.tensor([10.0]), torch.tensor([-10.0])) < 1e-6
    assert relativistic_g_loss(torch.tensor([10.0]), torch.tensor([-10.0])) > 19


@pytest.mark.parametrize("b", [2, 3, 5])
def test_prompt_roll_gives_every_item_another_items_prompt_on_a_copy(b):
    """Item i gets item i-1's prompt and flag, every time, and the caller's tensors stay as they were. A roll
    that writes into the caller's tensors fails here: the caller sees changed prompts, and rolling the same batch
    again (the next step, or another loss) rolls it back, which for b = 2 gives every item its own prompt."""
    text = torch.randn(b, 4)
    has = torch.arange(b) % 2 == 0
    original, original_has = text.clone(), has.clone()
    other = (torch.arange(b) - 1) % b
    for _ in range(2):
        rolled, rolled_has = roll_prompts(text, has)
        assert torch.equal(text, original) and torch.equal(has, original_has)
        assert torch.equal(rolled, original[other]) and torch.equal(rolled_has, original_has[other])
        assert all(not torch.equal(rolled[i], original[i]) for i in range(b))
    assert roll_prompts(text)[1] is None
    with pytest.raises(ValueError, match="at least 2"):
        roll_prompts(text[:1])


def test_step_with_grad_gives_the_numbers_of_step():
    """The exit step's differentiable path (concatenated keys, pending block written first) computes what the
    inference path (reused buffers, fused first step) computes, for the fused first step and a later one."""
    student = tiny_student()
    g = torch.Generator().manual_seed(2)
    ctx, block = torch.randn(2, 8, 512, generator=g), torch.randn(2, 4, 512, generator=g)
    text_c = student.text_cond(torch.randn(2, 384, generator=g), torch.ones(2, dtype=torch.bool))
    plain, grad = BlockCausalKVCache(student, batch=2), BlockCausalKVCache(student, batch=2)
    for cache in (plain, grad):
        cache.bootstrap(ctx)
        cache.advance(block)
    for _ in range(2):  # the fused first step (writes the pending block), then a plain step
        x_t, t = torch.randn(2, 4, 512, generator=g), torch.rand(2, generator=g)
        v = plain.step(x_t, t, text_c)
        v_grad = grad.step_with_grad(x_t, t, text_c)
        assert v_grad.requires_grad and not v.requires_grad
        assert (v - v_grad).abs().max() < 1e-5
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain.k + plain.v, grad.k + grad.v))


def test_gradient_reaches_the_parameters_only_through_each_blocks_exit_step(monkeypatch):
    """The parameter gradient of a rollout equals the gradient of its exit steps alone, recomputed from detached
    inputs: each block's exit input and clean history are constants (a fresh cache prefilled without gradient),
    so no gradient flows through earlier denoising steps or earlier blocks. The recomputed blocks also equal the
    uncached masked forward pass (the slow reference of ``lmdm.model.layouts``)."""
    student = tiny_student()
    W, B = student.cfg.window_chunks, student.cfg.block_frames
    g = torch.Generator().manual_seed(3)
    ctx, text = torch.randn(2, W * B, 512, generator=g), torch.randn(2, 384, generator=g)
    has = torch.ones(2, dtype=torch.bool)
    exits = []  # (cache chunk, x_t, t) of every differentiable step
    step_with_grad = BlockCausalKVCache.step_with_grad

    def spy(self, x_t, t, text_c, controls=None):
        exits.append((self.next_chunk, x_t.detach().clone(), t.clone()))
        return step_with_grad(self, x_t, t, text_c, controls)

    monkeypatch.setattr(BlockCausalKVCache, "step_with_grad", spy)
    ro = rollout(student, ctx, text, has, n_blocks=4, steps=4, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(BlockCausalKVCache, "step_with_grad", step_with_grad)
    assert all(1 <= k <= 3 for k in ro.exit_steps) and len(set(ro.exit_steps)) > 1
    assert [chunk for chunk, _, _ in exits] == [W + n for n in range(4)]  # one differentiable step per block
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


def test_one_tiny_arc_step_changes_generator_and_discriminator():
    student = tiny_student()
    disc = Discriminator(student, n_layers=1, head_width=16)
    assert disc.num_params() > 0
    opt_g = torch.optim.AdamW(student.parameters(), lr=1e-3)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    g0 = [p.detach().clone() for p in student.parameters()]
    d0 = [p.detach().clone() for p in disc.parameters()]
    prompts = []  # the prompts of every discriminator call
    forward = disc.forward
    disc.forward = lambda x_t, t, text, has_text, start: prompts.append(text.clone()) or forward(x_t, t, text,
                                                                                                  has_text, start)
    cfg = ARCConfig(batch_size=2, rollout_blocks=2, student_steps=3)
    text = torch.randn(2, 384)
    original = text.clone()
    out = arc_iteration(student, disc, opt_g, opt_d, torch.randn(2, 16, 512), text, cfg,
                        torch.Generator().manual_seed(0))
    assert all(math.isfinite(out[k]) for k in ("loss_g", "loss_d", "loss_c"))
    assert any(not torch.equal(a, b) for a, b in zip(g0, student.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, disc.parameters()))
    # G: real, fake; D: real, fake, real with other prompts. Only the last sees rolled prompts, and every item
    # of it another item's prompt; the caller's prompts are untouched.
    assert len(prompts) == 5 and torch.equal(text, original)
    assert all(torch.equal(p, original) for p in prompts[:4])
    assert all(not torch.equal(prompts[4][i], original[i]) for i in range(2))


@pytest.mark.parametrize("bf16", [None, True])
def test_arc_autocasts_off_the_cpu_by_default_and_on_it_when_asked(bf16):
    """ARC on the CPU stays float32 by default (its numbers before it had a device); bf16=True autocasts the
    rollout and the discriminator there too, with losses in float32."""
    student = tiny_student()
    disc = Discriminator(student, n_layers=1, head_width=16)
    seen = []
    forward = disc.forward
    disc.forward = lambda *a: seen.append(torch.is_autocast_enabled("cpu")) or forward(*a)
    cfg = ARCConfig(batch_size=2, rollout_blocks=2, student_steps=3, bf16=bf16)
    out = arc_iteration(student, disc, torch.optim.AdamW(student.parameters(), lr=1e-3),
                        torch.optim.AdamW(disc.parameters(), lr=1e-3), torch.randn(2, 16, 512),
                        torch.randn(2, 384), cfg, torch.Generator().manual_seed(0))
    assert seen == [bool(bf16)] * 5
    assert all(math.isfinite(out[k]) for k in ("loss_g", "loss_d", "loss_c"))
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in disc.head.parameters())


def test_arc_run_checkpoints_and_resumes_exactly(real_data, tmp_path):
    base = tmp_path / "base"
    save_checkpoint(base, tiny_student(), MelCodec(CodecConfig()), dtype=torch.float32)
    cfg = ARCConfig(init_from=str(base), data=str(real_data), run_dir=str(tmp_path / "arc"), steps=2, batch_size=2,
                    rollout_blocks=2, student_steps=3, disc_layers=1, disc_head_width=16, ckpt_every=1, log_every=1)
    r = arc_train(cfg, progress=False)
    assert r.step == 2 and (r.final_dir / "model.safetensors").is_file() and r.disc_params > 0
    with pytest.raises(ARCError, match="--resume"):
        arc_train(cfg, progress=False)
    with pytest.raises(ARCError, match=r"differs.*\['lr_g'\]"):
        arc_train(replace(cfg, lr_g=1.0), resume=True, progress=False)
    r2 = arc_train(replace(cfg, steps=3), resume=True, progress=False)
    assert r2.step == 3
    # resuming restored student, discriminator, optimisers, EMA and RNG: the straight 3-step run's numbers
    straight = arc_train(replace(cfg, steps=3, run_dir=str(tmp_path / "straight")), progress=False)
    assert r2.last["exit_steps"] == straight.last["exit_steps"]
    assert all(r2.last[k] == pytest.approx(straight.last[k], rel=1e-5) for k in ("loss_g", "loss_d", "loss_c"))
    for name in ("model", "disc", "ema"):
        a = load_file(str(latest_checkpoint(tmp_path / "arc") / f"{name}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "straight") / f"{name}.safetensors"))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
