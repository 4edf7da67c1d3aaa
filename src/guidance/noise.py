"""Noise rules: how each method draws the eps it noises the render with.

- ``fresh``: i.i.d. N(0, I) every step (SDS, VSD, ESD, SSD, SIM), from the step's
  ``Stream.NOISE`` generator.
- ``fixed_per_object``: one eps per object index, drawn once from the run seed
  (``Stream.FIXED_NOISE``): DSD's eps*, FSD on a fixed camera / particles.
The FSD world-map rule for 3D cameras lives in ``noise_worldmap.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src import rng


def fresh(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def fixed_per_object(shape: tuple[int, ...], index: Tensor, seed: int, like: Tensor) -> Tensor:
    """eps(k) ~ N(0, I) of shape ``shape`` for each object k in ``index`` (B,), the same every
    step for the same run seed -> (B, *shape) in like's dtype and device."""
    out = torch.empty((len(index), *shape), dtype=like.dtype)
    for i, k in enumerate(index.tolist()):
        out[i] = torch.randn(shape, generator=rng.generator(seed, rng.Stream.FIXED_NOISE, int(k)), dtype=like.dtype)
    return out.to(like.device)
