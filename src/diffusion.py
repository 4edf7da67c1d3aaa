"""Noise-schedule math in the one convention of docs/methods.md.

Discrete VP diffusion with T steps: ``x_t = alpha_t * x + sigma_t * eps`` where
``alpha_t = sqrt(abar[t])`` and ``sigma_t = sqrt(1 - abar[t])``.
Every helper takes a per-sample integer timestep tensor ``t`` of shape (B,).
"""

from __future__ import annotations

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
# Stable Diffusion's "scaled_linear" betas (diffusers' DDPMScheduler config of SD 1.x / 2.x),
# used by the analytic backbones so that timesteps and weights carry over to SD runs.
SD_BETA_START = 0.00085
SD_BETA_END = 0.012

WEIGHTINGS = ("sds", "uniform", "fantasia3d", "snr_inv", "sds_alpha", "sim_sds")


def sd_alphas_cumprod(
    num_steps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = SD_BETA_START,
    beta_end: float = SD_BETA_END,
) -> Tensor:
    """abar[t] of the scaled-linear schedule, float64, shape (num_steps,)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample (B,) tensor to broadcast against ``like`` (B, ...)."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def alpha_sigma(abar: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t), each (B,), in abar's dtype."""
    a = abar.to(t.device)[t]
    return a.sqrt(), (1.0 - a).sqrt()


def add_noise(x: Tensor, eps: Tensor, abar: Tensor, t: Tensor) -> Tensor:
    """x_t = alpha_t x + sigma_t eps."""
    alpha, sigma = alpha_sigma(abar, t)
    return bcast(alpha, x) * x + bcast(sigma, x) * eps


def weighting(name: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """w(t) of docs/methods.md "Weighting"; (B,) -> (B,)."""
    if name == "sds":
        return sigma**2
    if name == "uniform":
        return torch.ones_like(sigma)
    if name == "fantasia3d":
        return alpha * sigma**2
    if name == "snr_inv":
        return sigma / alpha
    if name == "sds_alpha":
        # sds with DreamFusion's dx_t/dx = alpha_t taken back out of w(t): DreamFusion absorbs it
        # into w(t) and SDS / VSD never apply it, but an estimator that differentiates through x_t
        # with autograd (SIM) carries alpha_t in dL/dx itself; sigma^2 / alpha puts the two on one
        # footing. Not in docs/methods.md's list of the papers'; SIM on ShapesWorld: docs/findings.md.
        return sigma**2 / alpha
    if name == "sim_sds":
        # SIM with l2 at the ideal camera psi steps w * 2 alpha / sigma^3 * (e_p - eps)
        # (src/guidance/sim.py); sigma^5 / (2 alpha) makes that SDS's sigma^2 (e_p - eps) exactly,
        # so what SIM then does beyond SDS is its learned psi's. A diagnostic, not in docs/methods.md.
        return sigma**5 / (2.0 * alpha)
    raise ValueError(f"unknown weighting {name!r}; valid: {', '.join(WEIGHTINGS)}")


def x0_from_eps(x_t: Tensor, eps: Tensor, abar: Tensor, t: Tensor) -> Tensor:
    """Tweedie's denoised estimate x0hat = (x_t - sigma_t eps) / alpha_t."""
    alpha, sigma = alpha_sigma(abar, t)
    return (x_t - bcast(sigma, x_t) * eps) / bcast(alpha, x_t)


def x0_to_eps(x_t: Tensor, x0: Tensor, abar: Tensor, t: Tensor) -> Tensor:
    """eps = (x_t - alpha_t x0) / sigma_t (x0-prediction models; the inverse of x0_from_eps)."""
    alpha, sigma = alpha_sigma(abar, t)
    return (x_t - bcast(alpha, x_t) * x0) / bcast(sigma, x_t)


def v_to_eps(x_t: Tensor, v: Tensor, abar: Tensor, t: Tensor) -> Tensor:
    """eps = sigma_t x_t + alpha_t v (v-prediction models, docs/methods.md)."""
    alpha, sigma = alpha_sigma(abar, t)
    return bcast(sigma, x_t) * x_t + bcast(alpha, x_t) * v


def ddim_step(x_t: Tensor, eps: Tensor, abar_t: Tensor, abar_s: Tensor) -> Tensor:
    """Deterministic DDIM (eta = 0) from time t to time s with predicted noise ``eps``.

    abar_t, abar_s: (B,) cumulative alphas (abar_s may be 1 for s = "clean").
    """
    a_t, a_s = bcast(abar_t, x_t), bcast(abar_s, x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
