"""Tiny NeRFs and cameras shared by the NeRF / export tests (CPU-fast)."""

from __future__ import annotations

import torch

from src.cameras_orbit import make_views
from src.representations.nerf import NeRF

TINY_GRID = dict(n_levels=4, n_features=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0)


def tiny_nerf(**kw) -> NeRF:
    torch.manual_seed(0)
    args = dict(grid=TINY_GRID, hidden=16, n_samples=24, background={"kind": "learned", "color": [1.0, 1.0, 1.0]})
    args.update(kw)
    return NeRF(**args)


def views(n: int = 2, res: int = 8, distance: float = 2.0, fovy: float = 40.0, elevation: float = 15.0):
    az = torch.linspace(0.0, 360.0, n + 1)[:-1]
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return make_views(az, full(elevation), full(distance), full(fovy), res, res)
