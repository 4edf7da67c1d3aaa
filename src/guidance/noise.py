"""Noise rules: how each method draws the eps it noises the render with.

- ``fresh``: i.i.d. N(0, I) every step (SDS, VSD, ESD, SSD, SIM).
- ``fixed``: one eps per object (``views.index``), drawn once from the run seed
  (DSD's eps*, FSD on a fixed camera / particles).
The FSD world-map rule for 3D cameras lives in ``noise_worldmap.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.cameras import ViewBatch

FIXED_NOISE_STREAM = 7919  # a generator offset so fixed noise never equals a step's fresh noise


def fresh(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def fixed_per_object(x: Tensor, views: ViewBatch, seed: int) -> Tensor:
    """eps(index) ~ N(0, I), the same every step for the same seed and object index."""
    out = torch.empty_like(x)
    for i, k in enumerate(views.index.tolist()):
        g = torch.Generator().manual_seed(seed * 1_000_003 + FIXED_NOISE_STREAM + int(k))
        out[i] = torch.randn(x.shape[1:], generator=g, dtype=x.dtype).to(x.device)
    return out
