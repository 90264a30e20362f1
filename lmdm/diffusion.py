"""Rectified flow maths and the two samplers, as pure functions (DESIGN.md section 5).

* Rectified flow (Liu et al. 2022; Esser et al. 2024 "Scaling Rectified Flow Transformers", eq. 2 ff.):
  ``x_t = (1 - t) x0 + t eps`` with ``t`` in [0, 1] (1 = pure noise); the network predicts the velocity
  ``v = eps - x0``; the clean estimate is ``x0_hat = x_t - t v``.
* Euler: ``x <- x + (t_next - t) v`` over a uniform (optionally shifted) schedule from 1 to 0.
* Ping-pong (stable-audio-tools ``sample_flow_pingpong``, used after ARC post-training): at each step predict
  ``x0_hat``, draw fresh noise and re-noise to the next timestep: ``x <- (1 - t_next) x0_hat + t_next eps``.
  Schedule: logSNR evenly spaced from -6 to 2, ``t = sigmoid(-logSNR)``, with ``t[0] = 1`` and ``t[-1] = 0``.
  With ``eta`` < 1 only that share of the next step's noise is fresh, the rest is the noise the model implies,
  ``eps_hat = x0_hat + v``: ``x <- (1 - t_next) x0_hat + t_next (sqrt(1 - eta^2) eps_hat + eta eps)``. eta = 1 is
  ping-pong, eta = 0 is deterministic DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with
  sigma = 0), which on the flow is exactly an Euler step over the same schedule. Like DDIM's eta it sets how much
  fresh noise enters, but here it is the fresh share of the next step's noise, not DDIM's scale of sigma, so values
  between the ends are not DDIM's.
* Classifier-free guidance (Ho & Salimans 2022): ``v = v_uncond + s (v_cond - v_uncond)``.
* Devices: noise is drawn from ``generator`` on its own device (the CPU for ``torch.Generator()``) and then moved
  to the sample's device, so a seed gives the same numbers on the CPU and on a GPU.
* Exit step (Self-Forcing, Huang et al. 2025, section 3.2; ARC-Forcing): :func:`sample` can stop at step ``k``
  and return that step's x0 prediction, the only step computed with gradient. Streamers and ARC rollouts share
  this one sampler loop.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch

from lmdm.errors import UsageError

SAMPLERS = ("euler", "pingpong")


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t eps``; ``t`` broadcasts from the left (``(b,)`` or ``(b, frames)`` against
    ``(b, frames, ch)``)."""
    t = t.reshape(*t.shape, *([1] * (x0.dim() - t.dim())))
    return (1 - t) * x0 + t * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The regression target ``v = eps - x0``."""
    return eps - x0


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0_hat = x_t - t v`` (``t`` broadcast as in :func:`add_noise`)."""
    t = t.reshape(*t.shape, *([1] * (x_t.dim() - t.dim())))
    return x_t - t * v


def euler_schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``(steps + 1,)`` timesteps from 1 to 0, uniform, optionally shifted towards noise
    (``t' = shift t / (1 + (shift - 1) t)``, SD3's resolution shift)."""
    _check_steps(steps)
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device="cpu")  # host-side numbers
    t = shift * t / (1 + (shift - 1) * t)
    return t.float()


def pingpong_schedule(steps: int, logsnr_min: float = -6.0, logsnr_max: float = 2.0) -> torch.Tensor:
    """``(steps + 1,)`` timesteps: ``t = sigmoid(-logSNR)``, logSNR evenly spaced, ends pinned to 1 and 0."""
    _check_steps(steps)
    logsnr = torch.linspace(logsnr_min, logsnr_max, steps + 1, dtype=torch.float64, device="cpu")
    t = torch.sigmoid(-logsnr)
    t[0], t[-1] = 1.0, 0.0
    return t.float()


def schedule(sampler: str, steps: int) -> torch.Tensor:
    """The schedule of ``sampler`` ("euler" or "pingpong").

    Raises:
        UsageError: unknown sampler or ``steps`` < 1.
    """
    if sampler == "euler":
        return euler_schedule(steps)
    if sampler == "pingpong":
        return pingpong_schedule(steps)
    raise UsageError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of the flow ODE: ``x + (t_next - t) v``."""
    return x + (t_next - t) * v


def pingpong_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, eps: torch.Tensor,
                  eta: float = 1.0) -> torch.Tensor:
    """One ping-pong step: ``(1 - t_next) x0_hat + t_next (sqrt(1 - eta^2) eps_hat + eta eps)`` with
    ``x0_hat = x - t v`` and ``eps_hat = x0_hat + v``; eta = 1 (the default) is ``(1 - t_next) x0_hat + t_next eps``,
    eta = 0 equals :func:`euler_step`."""
    x0 = x - t * v
    if eta == 1.0:
        return (1 - t_next) * x0 + t_next * eps
    return (1 - t_next) * x0 + t_next * (math.sqrt(1.0 - eta * eta) * (x0 + v) + eta * eps)


def noise_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype and device of ``x``, drawn from ``generator`` on the generator's
    device (None: torch's global RNG on ``x``'s device) and moved to ``x``'s device."""
    device = x.device if generator is None else generator.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``v_uncond + scale (v_cond - v_uncond)`` (scale 1 = conditional only)."""
    return v_uncond + scale * (v_cond - v_uncond)


def sample(velocity: Callable[[torch.Tensor, float, int], torch.Tensor], noise: torch.Tensor, sampler: str,
           steps: int, generator: torch.Generator | None = None,
           on_step: Callable[[int], None] | None = None, exit_step: int | None = None,
           eta: float = 1.0) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to a clean sample (t = 0), or stop early at an exit step.

    Args:
        velocity: ``velocity(x_t, t, step_index) -> v`` with the shape of ``x_t``.
        noise: ``(b, frames, ch)`` starting point.
        sampler: "euler" or "pingpong".
        steps: denoising steps ``S``.
        generator: RNG for ping-pong's fresh noise.
        on_step: called with the step index after each step (timing hooks).
        exit_step: ``k`` in ``[1, S]``: run steps ``0 .. k-2`` without gradient and return the x0 prediction of
            step ``k-1``, computed with gradient (the exit step of ARC-Forcing's rollouts; Self-Forcing, Huang et
            al. 2025, section 3.2). None runs all ``S`` steps as they come (no grad mode is changed).
        eta: ping-pong's share of fresh noise at each re-noising, in [0, 1] (1 = ping-pong, 0 = DDIM); Euler
            ignores it.

    Returns:
        the clean sample (or the exit step's x0 prediction), same shape as ``noise``.

    Raises:
        UsageError: unknown sampler, ``steps`` < 1, ``exit_step`` outside ``[1, steps]`` or ``eta`` outside [0, 1].
    """
    ts = schedule(sampler, steps)
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and 0.0 <= eta <= 1.0):
        raise UsageError(f"eta must be a number from 0 to 1, got {eta!r}")
    if exit_step is not None and not (isinstance(exit_step, int) and 1 <= exit_step <= steps):
        raise UsageError(f"exit_step must be an integer in [1, {steps}], got {exit_step!r}")
    x = noise
    for i in range(steps if exit_step is None else exit_step):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if exit_step is not None and i == exit_step - 1:
            with torch.enable_grad():
                x = x0_from_velocity(x, velocity(x, t, i), torch.tensor(t, device=x.device))
        else:
            with torch.no_grad() if exit_step is not None else contextlib.nullcontext():
                v = velocity(x, t, i)
                if sampler == "euler":
                    x = euler_step(x, v, t, t_next)
                elif t_next > 0:
                    x = pingpong_step(x, v, t, t_next, noise_like(x, generator), eta)
                else:
                    x = x0_from_velocity(x, v, torch.tensor(t, device=x.device))
        if on_step is not None:
            on_step(i)
    return x


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
