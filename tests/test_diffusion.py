"""Schedules, sampler steps and CFG against their formulas (DESIGN.md section 5)."""
import math

import pytest
import torch

from lmdm.diffusion import (add_noise, cfg_combine, euler_schedule, euler_step, pingpong_schedule, pingpong_step,
                            sample, x0_from_velocity)


def test_pingpong_schedule_matches_formula():
    s = pingpong_schedule(4)
    logsnr = [-6 + 8 * i / 4 for i in range(5)]
    ref = [1 / (1 + math.exp(l)) for l in logsnr]  # sigmoid(-logsnr)
    ref[0], ref[-1] = 1.0, 0.0
    assert torch.allclose(s, torch.tensor(ref), atol=1e-6)
    assert (s[1:] < s[:-1]).all()


def test_euler_schedule():
    assert torch.allclose(euler_schedule(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = euler_schedule(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > euler_schedule(4)[1:-1]).all()


def test_rectified_flow_identities():
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    t = torch.tensor([0.3, 0.8])
    x_t = add_noise(x0, eps, t)
    assert torch.allclose(x_t[1], 0.2 * x0[1] + 0.8 * eps[1])
    assert torch.allclose(x0_from_velocity(x_t, eps - x0, t), x0, atol=1e-6)


def test_steps_with_the_true_velocity_reach_x0():
    """With the exact velocity of a single data point, both samplers land on it."""
    x0 = torch.randn(1, 4, 3)
    for name in ("euler", "pingpong"):
        eps = torch.randn_like(x0)
        out = sample(lambda x, t, i: (x - x0) / max(t, 1e-8), eps, name, 5, torch.Generator().manual_seed(0))
        assert torch.allclose(out, x0, atol=1e-5), name


def test_step_formulas():
    x, v, e = torch.randn(5), torch.randn(5), torch.randn(5)
    assert torch.allclose(euler_step(x, v, 0.8, 0.5), x - 0.3 * v)
    assert torch.allclose(pingpong_step(x, v, 0.8, 0.5, e), 0.5 * (x - 0.8 * v) + 0.5 * e)


def test_cfg_combine():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_combine(c, u, 1.0).item() == 2.0
    assert cfg_combine(c, u, 3.0).item() == 4.0


def test_bad_steps():
    with pytest.raises(ValueError, match="positive integer"):
        euler_schedule(0)
