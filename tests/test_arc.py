"""ARC-Forcing: losses equal their formulas, the prompt roll always gives a negative, gradient reaches only the
exit step of each block, and one step changes both players."""
import math

import pytest
import torch

from lmdm.train.arc.discriminator import Discriminator
from lmdm.train.arc.losses import contrastive_loss, relativistic_d_loss, relativistic_g_loss, roll_prompts
from lmdm.train.arc.rollout import rollout
from lmdm.train.arc.trainer import ARCConfig, arc_iteration, arc_train
from lmdm.checkpoint import save_checkpoint
from lmdm.audio.codec import CodecConfig
from lmdm.model.config import DiTConfig
from lmdm.model.dit import DiT

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
def test_prompt_roll_never_leaves_an_item_its_own_prompt(b):
    text = torch.arange(b, dtype=torch.float32)[:, None].repeat(1, 4)
    has = torch.ones(b, dtype=torch.bool)
    original = text.clone()
    rolled, rolled_has = roll_prompts(text, has)
    assert torch.equal(text, original)  # rolled on a copy
    assert all(not torch.equal(rolled[i], text[i]) for i in range(b))
    assert torch.equal(rolled[0], text[-1]) and rolled_has.all()
    with pytest.raises(ValueError, match="at least 2"):
        roll_prompts(text[:1])


def test_gradient_reaches_only_the_exit_step_of_each_block():
    student = tiny_student()
    ctx = torch.randn(2, 8, 512)
    text = torch.randn(2, 384)
    hooks = []
    ro = rollout(student, ctx, text, torch.ones(2, dtype=torch.bool), n_blocks=4, steps=4,
                 generator=torch.Generator().manual_seed(1), hooks=hooks)
    assert all(1 <= k <= 3 for k in ro.exit_steps) and len(set(ro.exit_steps)) > 1
    for n, k in enumerate(ro.exit_steps):
        steps = [(i, g) for blk, i, g in hooks if blk == n]
        assert steps == [(i, i == k - 1) for i in range(k)]  # k-1 steps without gradient, the exit step with
    # blocks are detached from each other: block 2 does not depend on block 1 through the cache
    assert torch.autograd.grad(ro.per_block[2].sum(), ro.per_block[1], allow_unused=True)[0] is None
    grads = torch.autograd.grad(ro.per_block[2].sum(), list(student.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_one_tiny_arc_step_changes_generator_and_discriminator():
    student = tiny_student()
    disc = Discriminator(student, n_layers=1, head_width=16)
    assert disc.num_params() > 0
    opt_g = torch.optim.AdamW(student.parameters(), lr=1e-3)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    g0 = [p.detach().clone() for p in student.parameters()]
    d0 = [p.detach().clone() for p in disc.parameters()]
    cfg = ARCConfig(batch_size=2, rollout_blocks=2, student_steps=3)
    out = arc_iteration(student, disc, opt_g, opt_d, torch.randn(2, 16, 512), torch.randn(2, 384), cfg,
                        torch.Generator().manual_seed(0))
    assert all(math.isfinite(out[k]) for k in ("loss_g", "loss_d", "loss_c"))
    assert any(not torch.equal(a, b) for a, b in zip(g0, student.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, disc.parameters()))


def test_arc_run_checkpoints_and_resumes(real_data, tmp_path):
    base = tmp_path / "base"
    save_checkpoint(base, tiny_student(), CodecConfig(), dtype=torch.float32)
    cfg = ARCConfig(init_from=str(base), data=str(real_data), run_dir=str(tmp_path / "arc"), steps=2, batch_size=2,
                    rollout_blocks=2, student_steps=3, disc_layers=1, disc_head_width=16, ckpt_every=1, log_every=1)
    r = arc_train(cfg, progress=False)
    assert r.step == 2 and (r.final_dir / "model.safetensors").is_file() and r.disc_params > 0
    r2 = arc_train(ARCConfig(**{**cfg.__dict__, "steps": 3}), resume=True, progress=False)
    assert r2.step == 3
    # resuming restored student, discriminator, optimisers, EMA and RNG: same weights as a straight 3-step run
    straight = arc_train(ARCConfig(**{**cfg.__dict__, "steps": 3, "run_dir": str(tmp_path / "straight")}),
                         progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(r2.final_dir / "model.safetensors")), load_file(str(straight.final_dir / "model.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
