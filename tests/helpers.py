"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from src.backbones.mog import GaussianMixture
from src.schedules import Grid, Uniform


def make_guidance(cls, backbone, t: int | list[int] | None = None, representation=None, **kw):
    """A guidance object on ``backbone`` whose schedule returns fixed timesteps."""
    T = backbone.num_timesteps
    if t is None:
        schedule = Uniform(T)
    else:
        grid = [t] if isinstance(t, int) else list(t)
        schedule = Grid(T, grid)
    kw.setdefault("prompt", backbone.default_prompt)
    return cls(backbone=backbone, schedule=schedule, representation=representation, **kw)


def pixel_mixture(shape=(3, 8, 8), n_components: int = 3, var: float = 0.02, seed: int = 0) -> GaussianMixture:
    """An analytic pixel-space target: a few images in [-1, 1] with isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    D = int(torch.tensor(shape).prod())
    means = (torch.rand(n_components, D, generator=g, dtype=torch.float64) * 2 - 1).tolist()
    tags = [["img"] for _ in range(n_components)]
    return GaussianMixture(means=means, covs=[var] * n_components, tags=tags, default_prompt="img",
                           name="pixels")


