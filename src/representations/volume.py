"""Volume rendering, functional core (gsplat style: shapes in signatures, a reference
next to each fast path).

Two ways to place samples along rays, both ending in nerfacc's compositing:

- dense (CPU and CUDA): every ray gets the same number of intervals inside its
  intersection with the scene box, as (n_rays, n_samples) tensors; nerfacc's
  *dense* functions (``render_weight_from_density``, ``accumulate_along_rays``)
  run on the CPU on such tensors (the packed / occupancy-grid ones need CUDA).
- packed (CUDA): ``nerfacc.OccGridEstimator.sampling`` marches with a fixed step
  and skips empty cells; see ``NeRF._render_occgrid`` in nerf.py.

``fixed_step_intervals`` reproduces the occupancy-grid marcher's sample positions
on a dense tensor (a sample is kept iff its midpoint is inside the box, steps
start at the near plane), which lets a test compare the two paths exactly.
``composite_reference`` is hand-written alpha compositing, the reference for
``composite``.
"""

from __future__ import annotations

import nerfacc
import torch
from torch import Tensor


def ray_aabb(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against the box [-radius, radius]^3.

    origins, dirs (..., 3) -> t_near, t_far (...) with t_near >= 0, and hit (...) bool.
    """
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-radius - origins) * inv
    t1 = (radius - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near


def dense_intervals(
    t_near: Tensor, t_far: Tensor, n_samples: int, stratified: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """n_samples equal intervals per ray in [t_near, t_far]; (R,), (R,) -> (R, S), (R, S).

    stratified: shift each ray's whole partition by U[0, 1) of an interval (then clip
    to t_far), as nerfacc's ``stratified=True`` shifts the marcher's start; the
    density is evaluated at interval midpoints, so the jitter is what makes the
    estimate unbiased across steps.
    """
    span = (t_far - t_near).clamp_min(0.0)[:, None]  # (R, 1)
    k = torch.arange(n_samples + 1, dtype=t_near.dtype, device=t_near.device)  # (S+1,)
    edges = k / n_samples
    if stratified:
        u = torch.rand(t_near.shape[0], 1, generator=generator, dtype=t_near.dtype)
        edges = edges + u.to(t_near.device) / n_samples
    edges = t_near[:, None] + span * edges.clamp(max=1.0)
    return edges[:, :-1], edges[:, 1:]


def fixed_step_intervals(
    t_min: Tensor, t_max: Tensor, step: float, n_max: int, near_plane: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The occupancy-grid marcher's samples (grid fully occupied, no cone angle), dense.

    nerfacc's ``traverse_grids`` starts at ``near_plane`` and steps by ``step``; an
    interval [t, t + step] is emitted iff its midpoint lies in [t_min, t_max] (the ray's
    box intersection). (R,), (R,) -> t_starts, t_ends (R, n_max) and valid (R, n_max);
    invalid intervals are zero-length so they add nothing to the compositing.
    """
    k = torch.arange(n_max, dtype=t_min.dtype, device=t_min.device)
    first = torch.ceil((t_min - near_plane) / step - 0.5).clamp_min(0.0)  # first midpoint >= t_min
    t_starts = near_plane + (first[:, None] + k) * step
    mid = t_starts + 0.5 * step
    valid = (mid >= t_min[:, None]) & (mid < t_max[:, None])
    t_ends = torch.where(valid, t_starts + step, t_starts)
    return t_starts, t_ends, valid


def composite(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, rgbs: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """nerfacc's dense compositing. (R, S) x3, (R, S, 3) -> rgb (R, 3), opacity (R, 1),
    depth (R, 1) (expected t of the opaque part, 0 where empty), weights (R, S)."""
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    rgb = nerfacc.accumulate_along_rays(weights, rgbs)
    opacity = nerfacc.accumulate_along_rays(weights, None)
    t_mid = 0.5 * (t_starts + t_ends)
    depth = nerfacc.accumulate_along_rays(weights, t_mid[..., None]) / opacity.clamp_min(1e-6)
    return rgb, opacity, depth, weights


def composite_reference(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, rgbs: Tensor
) -> tuple[Tensor, Tensor]:
    """Hand-written alpha compositing (Max 1995 / NeRF eq. 3), loops over samples.

    alpha_i = 1 - exp(-sigma_i * dt_i), T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i.
    Returns rgb (R, 3), opacity (R, 1).
    """
    R, S = sigmas.shape
    T = torch.ones(R, dtype=sigmas.dtype, device=sigmas.device)
    rgb = torch.zeros(R, 3, dtype=sigmas.dtype, device=sigmas.device)
    acc = torch.zeros(R, dtype=sigmas.dtype, device=sigmas.device)
    for i in range(S):
        alpha = 1.0 - torch.exp(-sigmas[:, i] * (t_ends[:, i] - t_starts[:, i]))
        w = T * alpha
        rgb = rgb + w[:, None] * rgbs[:, i]
        acc = acc + w
        T = T * (1.0 - alpha)
    return rgb, acc[:, None]
