"""FSD's world-map noise for 3D cameras (papers/fsd.txt Eq. 14-16; docs/methods.md "FSD").

    eps(c) = sqrt(beta) * ((1 - M) * eps_b + M * W(eps_p; azimuth, polar))
             + sqrt(1 - beta) * eps_fresh

- ``eps_p``: one fixed Gaussian "world map" per run and object, periodic in both
  axes, of size (180/Theta * h) x (360/Theta * w) for a patch angle Theta (the
  authors' follow-up, Consistent Flow Distillation, uses Theta = 180 deg: a 1h x 2w map).
- ``W``: the h x w patch of ``eps_p`` centred at (row, col) =
  (H_map * polar / pi, W_map * azimuth / 2pi), polar = 90 deg - elevation, read with
  wrap-around (the map is a torus, so azimuth 0 and 2pi give the same patch, and nearby
  cameras share most of their noise).
- ``eps_b``: a fixed background noise (per run and object), ``M`` the foreground
  mask: rendered opacity > a0, resized to the backbone-space resolution.

Every pixel is a unit-variance Gaussian whatever M and beta are (M is 0/1 and
beta + (1 - beta) = 1), so the result is a valid eps for x_t = alpha x + sigma eps.
With beta = 1 it depends only on (seed, object, camera, mask): deterministic.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from src import rng
from src.cameras import ViewBatch

# Consistent Flow Distillation defaults (docs/methods.md "FSD")
CFD_PATCH_ANGLE_DEG = 180.0
DEFAULT_OPACITY_THRESHOLD = 0.5


def map_size(h: int, w: int, patch_angle_deg: float) -> tuple[int, int]:
    """(H_map, W_map) = (180/Theta * h, 360/Theta * w), rounded; never smaller than the patch."""
    H = max(h, int(round(180.0 / patch_angle_deg * h)))
    W = max(w, int(round(360.0 / patch_angle_deg * w)))
    return H, W


@lru_cache(maxsize=64)
def fixed_noises(seed: int, obj: int, c: int, h: int, w: int, patch_angle_deg: float) -> tuple[Tensor, Tensor]:
    """(eps_p (C, H_map, W_map), eps_b (C, h, w)), float32 on the CPU, fixed per (seed, object)."""
    H, W = map_size(h, w, patch_angle_deg)
    eps_p = torch.randn(c, H, W, generator=rng.generator(seed, rng.Stream.WORLD_MAP, obj))
    eps_b = torch.randn(c, h, w, generator=rng.generator(seed, rng.Stream.WORLD_BACKGROUND, obj))
    return eps_p, eps_b


def crop_periodic(world: Tensor, row: int, col: int, h: int, w: int) -> Tensor:
    """The (C, h, w) patch of world (C, H, W) centred at (row, col), wrapping around both axes.

    "Centred" for even sizes: the patch covers rows row - h//2 ... row - h//2 + h - 1.
    """
    H, W = world.shape[-2:]
    rows = (torch.arange(h) + (row - h // 2)) % H
    cols = (torch.arange(w) + (col - w // 2)) % W
    return world[:, rows][:, :, cols]


def patch_centre(azimuth_deg: float, elevation_deg: float, H: int, W: int) -> tuple[int, int]:
    """Pixel (row, col) of the map for a camera: (H * polar / pi, W * azimuth / 2pi), wrapped."""
    polar = math.radians(90.0 - elevation_deg)
    az = math.radians(azimuth_deg) % (2 * math.pi)
    return int(round(H * polar / math.pi)) % H, int(round(W * az / (2 * math.pi))) % W


def foreground_mask(opacity: Tensor | None, h: int, w: int, threshold: float, batch: int) -> Tensor:
    """M = opacity > a0 at the backbone-space resolution; opacity (B, H, W, 1) -> (B, 1, h, w).

    Downsampling averages the opacity over each backbone pixel first (area), so a
    latent pixel is foreground when most of its 8x8 patch is. No opacity: all foreground.
    """
    if opacity is None:
        return torch.ones(batch, 1, h, w)
    o = opacity.detach().float().permute(0, 3, 1, 2)
    if o.shape[-2:] != (h, w):
        mode = "area" if o.shape[-2] >= h and o.shape[-1] >= w else "bilinear"
        o = F.interpolate(o, size=(h, w), mode=mode)
    return (o > threshold).float().cpu()


def world_map_noise(
    x_shape,
    views: ViewBatch,
    opacity: Tensor | None,
    beta: float,
    seed: int,
    generator: torch.Generator | None,
    patch_angle_deg: float = CFD_PATCH_ANGLE_DEG,
    opacity_threshold: float = DEFAULT_OPACITY_THRESHOLD,
) -> Tensor:
    """FSD's eps(c), shaped x_shape = (B, C, h, w), float32 on the CPU (move it to x).

    views: needs azimuth_deg and elevation_deg (B,) and index (B,) (the object, so K
    particles get K different world maps). opacity: the render's (B, H, W, 1) or None.
    beta in [0, 1]: 1 = deterministic, 0 = fresh noise (SDS). generator: for the fresh
    part (unused when beta = 1).
    """
    B, C, h, w = (int(v) for v in x_shape)
    if views.azimuth_deg is None or views.elevation_deg is None:
        raise ValueError("world_map_noise needs views with azimuth_deg and elevation_deg (3D cameras)")
    fresh = torch.randn(B, C, h, w, generator=generator) if beta < 1.0 else None
    if beta == 0.0:
        return fresh
    M = foreground_mask(opacity, h, w, opacity_threshold, B)  # (B, 1, h, w)
    fixed = torch.empty(B, C, h, w)
    az, el, idx = views.azimuth_deg.tolist(), views.elevation_deg.tolist(), views.index.tolist()
    for i in range(B):
        eps_p, eps_b = fixed_noises(int(seed), int(idx[i]), C, h, w, float(patch_angle_deg))
        row, col = patch_centre(az[i], el[i], *eps_p.shape[-2:])
        patch = crop_periodic(eps_p, row, col, h, w)
        fixed[i] = (1.0 - M[i]) * eps_b + M[i] * patch
    if fresh is None:
        return fixed
    return math.sqrt(beta) * fixed + math.sqrt(1.0 - beta) * fresh
