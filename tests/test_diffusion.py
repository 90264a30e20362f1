"""Schedules, sampler steps and CFG against their formulas (DESIGN.md section 5)."""
import math

import pytest
import torch

from lmdm.diffusion import (
    add_noise,
    cfg_combine,
    euler_schedule,
    euler_step,
    pingpong_schedule,
    pingpong_step,
    sample,
    schedule,
    x0_from_velocity,
)
from lmdm.errors import UsageError


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
    # eta: the share of fresh noise; 0 keeps the model's own noise estimate (DDIM), which is an Euler step
    x0, eps_hat = x - 0.8 * v, x - 0.8 * v + v
    assert torch.allclose(pingpong_step(x, v, 0.8, 0.5, e, eta=0.0), euler_step(x, v, 0.8, 0.5), atol=1e-6)
    assert torch.allclose(pingpong_step(x, v, 0.8, 0.5, e, eta=0.6), 0.5 * x0 + 0.5 * (0.8 * eps_hat + 0.6 * e))


def test_eta_zero_follows_the_ode_on_pingpongs_schedule_and_eta_is_checked():
    """A whole ping-pong run with eta 0 draws no noise that matters: it equals Euler steps over ping-pong's schedule
    whatever the generator, while eta 1 depends on it; eta outside [0, 1] is refused."""
    torch.manual_seed(0)
    w = torch.randn(3, 3) * 0.3
    vel = lambda x, t, i: x @ w + t  # any smooth field
    noise = torch.randn(1, 4, 3)
    ts = schedule("pingpong", 6)
    x = noise
    for i in range(6):
        x = euler_step(x, vel(x, float(ts[i]), i), float(ts[i]), float(ts[i + 1]))
    for seed in (0, 1):
        out = sample(vel, noise, "pingpong", 6, torch.Generator().manual_seed(seed), eta=0.0)
        assert torch.allclose(out, x, atol=1e-5)
    a, b = (sample(vel, noise, "pingpong", 6, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert not torch.allclose(a, b)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(UsageError, match="eta must be"):
            sample(vel, noise, "pingpong", 6, eta=bad)


def test_cfg_combine():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_combine(c, u, 1.0).item() == 2.0
    assert cfg_combine(c, u, 3.0).item() == 4.0


def test_bad_steps():
    with pytest.raises(ValueError, match="positive integer"):
        euler_schedule(0)


def _recording_velocity(w, calls):
    """``v = w x``; records ``(x, t, grad enabled)`` of every call."""
    def velocity(x, t, i):
        calls.append((x.detach().clone(), t, torch.is_grad_enabled()))
        return w * x
    return velocity


@pytest.mark.parametrize("sampler", ["euler", "pingpong"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_exit_step_returns_that_steps_x0_prediction_with_gradient_only_through_it(sampler, k):
    """``sample(..., exit_step=k)`` follows the full sampler's path for k-1 steps (same noise draws), then
    returns ``x - t v`` of step k-1; its gradient is that of the exit step alone, from a constant input."""
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    w = torch.tensor(0.7, requires_grad=True)
    full_calls, exit_calls = [], []
    sample(_recording_velocity(w.detach(), full_calls), noise, sampler, 5, torch.Generator().manual_seed(1))
    out = sample(_recording_velocity(w, exit_calls), noise, sampler, 5, torch.Generator().manual_seed(1),
                 exit_step=k)
    assert len(exit_calls) == k
    for (xa, ta, _), (xb, tb, _) in zip(full_calls[:k], exit_calls):
        assert ta == tb and torch.allclose(xa, xb)
    x_k, t_k, _ = exit_calls[-1]
    assert torch.allclose(out, x_k - t_k * 0.7 * x_k, atol=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert torch.allclose(grad, -t_k * x_k.sum(), rtol=1e-5)  # d/dw of x_k - t w x_k with x_k constant
    assert [g for _, _, g in exit_calls] == [False] * (k - 1) + [True]


def test_sample_without_exit_step_keeps_the_callers_grad_mode():
    w = torch.tensor(0.5, requires_grad=True)
    out = sample(lambda x, t, i: w * x, torch.ones(1, 2, 1), "euler", 3)
    assert out.requires_grad  # the whole chain is differentiable when the caller asks for it
    with torch.no_grad():
        assert not sample(lambda x, t, i: w * x, torch.ones(1, 2, 1), "euler", 3).requires_grad


def test_bad_exit_step():
    for k in (0, 6, 2.0):
        with pytest.raises(ValueError, match="exit_step"):
            sample(lambda x, t, i: x, torch.zeros(1, 1, 1), "pingpong", 5, exit_step=k)


@pytest.mark.parametrize("steps, exit_step", [(1, None), (3, 2)])
def test_sample_keeps_every_tensor_on_the_noises_device(steps, exit_step):
    # the meta device stands in for a GPU here: a CPU tensor beside it fails as a CUDA one does (a host-side t
    # made every ping-pong stream and every ARC rollout fail on CUDA, found on an H200)
    noise = torch.zeros(1, 4, 3, device="meta")
    out = sample(lambda x, t, i: torch.zeros_like(x), noise, "pingpong", steps, None, exit_step=exit_step)
    assert out.device.type == "meta" and out.shape == noise.shape
